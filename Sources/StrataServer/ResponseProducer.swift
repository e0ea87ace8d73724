import GRPCCore

extension StreamingServerResponse {
    /// What writes an accepted response's messages. grpc-swift runs it after the handler and every
    /// interceptor have returned, so an interceptor that must cover the whole RPC (a task-local, a
    /// clock, a count, a status mapping) wraps it as well as `next`.
    typealias Producer = @Sendable (RPCWriter<Message>) async throws -> Metadata

    /// Replaces the producer of an accepted response by `wrap(producer)`; returns false, changing
    /// nothing, when the response is a rejection (it has no producer).
    @discardableResult
    mutating func wrapProducer(_ wrap: (@escaping Producer) -> Producer) -> Bool {
        guard case .success(var contents) = accepted else { return false }
        contents.producer = wrap(contents.producer)
        accepted = .success(contents)
        return true
    }
}
