import GRPCCore
import StrataCore

/// Sets `RequestDeadline.current` from the client's `grpc-timeout` for the whole RPC: the handler and
/// the producer of its streamed response (which runs after the handler returns), so every backend
/// call made for the request can bound itself by the time the client still waits. The deadline's
/// scope ends with the RPC, so work it leaves running (deferred writes, repairs) is not bounded by it.
struct RequestDeadlineInterceptor: ServerInterceptor {
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        guard let header = request.metadata[stringValues: "grpc-timeout"].first(where: { _ in true }),
              let timeout = RequestDeadline.parseGRPCTimeout(header) else {
            return try await next(request, context)
        }
        let scope = RequestDeadline.Scope(deadline: .now + timeout)
        var response: StreamingServerResponse<Output>
        do {
            response = try await RequestDeadline.within(scope) { try await next(request, context) }
        } catch {
            scope.end()
            throw error
        }
        let accepted = response.wrapProducer { producer in
            { writer in
                defer { scope.end() }
                return try await RequestDeadline.within(scope) { try await producer(writer) }
            }
        }
        if !accepted { scope.end() }
        return response
    }
}
