import GRPCCore
import StrataAuth
import StrataCore
@testable import StrataServer
import Testing

/// The interceptor refuses nothing: a service that looks up no instance (gRPC health, server
/// reflection) is served without a token, and the refusal reason waits in the context for the
/// instance lookup.
@Suite struct AuthenticationInterceptorTests {
    static let secret = "correct horse battery staple, 32 bytes or more"

    func intercept(metadata: Metadata, method: MethodDescriptor) async throws -> RequestContext {
        let jwt = JWTSettings(algorithm: .hs256, keys: .secret(Self.secret))
        let interceptor = AuthenticationInterceptor(
            authentication: Authentication(settings: AuthorizationSettings(method: .jwt(jwt)), tokens: try JWTAuthenticator(settings: jwt)))
        let requestContext = RequestContext(service: method.service.fullyQualifiedService, method: method.method, peer: "ipv4:10.1.2.3:4000")
        let response: StreamingServerResponse<String> = try await RequestContext.$current.withValue(requestContext) {
            try await interceptor.intercept(
                request: StreamingServerRequest<String>(metadata: metadata, messages: RPCAsyncSequence(wrapping: AsyncThrowingStream { $0.finish() })),
                context: ServerContext(descriptor: method, remotePeer: "ipv4:10.1.2.3:4000", localPeer: "test", cancellation: .init())
            ) { _, _ in StreamingServerResponse(single: ServerResponse(message: "served")) }
        }
        #expect((try? response.accepted.get()) != nil, "the request went on to its handler")
        return requestContext
    }

    @Test func healthIsServedWithoutAToken() async throws {
        let health = MethodDescriptor(fullyQualifiedService: "grpc.health.v1.Health", method: "Check")
        let context = try await intercept(metadata: [:], method: health)
        #expect(context.principal == .anonymous)
        #expect(context.authenticationFailure?.contains("no token") == true)
    }

    @Test func aValidTokenBecomesThePrincipal() async throws {
        let token = try await TokenMaker.hs256(TestClaims(sub: "alice"), secret: Self.secret)
        let find = MethodDescriptor(fullyQualifiedService: "build.bazel.remote.execution.v2.ContentAddressableStorage", method: "FindMissingBlobs")
        let context = try await intercept(metadata: ["authorization": "Bearer \(token)"], method: find)
        #expect(context.principal == Principal(source: .jwt, actor: "alice", subject: "alice", workflow: nil))
        #expect(context.authenticationFailure == nil)
    }
}
