import GRPCCore
import StrataAuth
import StrataCore

/// Establishes who sent the request, by `authorization:`'s method, and records it in
/// `RequestContext.current`: the principal, or why its credentials were refused. It rejects nothing:
/// the instance is not known yet (an instance may allow unauthenticated requests), so the registry's
/// `AccessPolicy` decides when the service looks the instance up. Services that look up no instance
/// (gRPC health, server reflection) are therefore served without credentials.
struct AuthenticationInterceptor: ServerInterceptor {
    let authentication: Authentication

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        if let requestContext = RequestContext.current {
            let credentials = Self.credentials(request.metadata, context: context)
            switch await authentication.authenticate(credentials) {
            case .success(let principal): requestContext.setPrincipal(principal)
            case .failure(let error): requestContext.setAuthenticationFailure(error.message)
            }
        }
        return try await next(request, context)
    }

    static func credentials(_ metadata: Metadata, context: ServerContext) -> RequestCredentials {
        func first(_ key: String) -> String? { metadata[stringValues: key].first(where: { _ in true }) }
        // RequestContextInterceptor has read the verified client certificate of a mutual-TLS connection.
        let principal = RequestContext.current?.principal
        return RequestCredentials(
            authorization: first("authorization"), actorHeader: first("x-request-actor"),
            subjectHeader: first("x-request-subject"), workflowHeader: first("x-request-workflow"),
            clientCertificateSubject: principal?.source == .clientCertificate ? principal?.actor : nil)
    }
}
