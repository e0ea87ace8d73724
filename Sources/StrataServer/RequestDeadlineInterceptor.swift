import GRPCCore
import StrataCore

/// Sets `RequestDeadline.current` from the client's `grpc-timeout` for the whole RPC: the handler and
/// the producer of its streamed response (which runs after the handler returns), so every backend
/// call made for the request can bound itself by the time the client still waits.
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
        let deadline = ContinuousClock.now + timeout
        var response = try await RequestDeadline.$current.withValue(deadline) { try await next(request, context) }
        if case .success(var contents) = response.accepted {
            let producer = contents.producer
            contents.producer = { writer in
                try await RequestDeadline.$current.withValue(deadline) { try await producer(writer) }
            }
            response.accepted = .success(contents)
        }
        return response
    }
}
