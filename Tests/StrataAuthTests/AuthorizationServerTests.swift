import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataActionCache
import StrataAuth
import StrataCore
import StrataServer
import StrataStorage
import Testing

/// A real server over loopback gRPC with `authorization: {method: jwt}` and a read-only ACL: the
/// status codes and messages clients see.
@Suite struct AuthorizationServerTests {
    static let secret = "correct horse battery staple, 32 bytes or more"

    typealias CAS = Build_Bazel_Remote_Execution_V2_ContentAddressableStorage.Client<HTTP2ClientTransport.Posix>
    typealias AC = Build_Bazel_Remote_Execution_V2_ActionCache.Client<HTTP2ClientTransport.Posix>
    typealias Capabilities = Build_Bazel_Remote_Execution_V2_Capabilities.Client<HTTP2ClientTransport.Posix>

    func withAuthorizedServer(
        _ settings: AuthorizationSettings, _ body: @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Void
    ) async throws {
        let store = LRUBlobStore(capacityBytes: 1 << 20)
        let instances = ["main", "open"].map {
            Instance(name: $0, cas: .init(store: store), byteStream: .init(store: store), actionCache: LRUActionCache(maxEntries: 10))
        }
        var tokens: JWTAuthenticator?
        if case .jwt(let jwt) = settings.method { tokens = try JWTAuthenticator(settings: jwt) }
        let server = try StrataServer(
            registry: InstanceRegistry(instances, accessPolicy: AccessPolicy(settings: settings)),
            addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))], eventLoops: 1,
            authentication: Authentication(settings: settings, tokens: tokens))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
            let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
            try await withGRPCClient(transport: transport) { client in try await body(client) }
            server.beginGracefulShutdown()
            try await group.waitForAll()
        }
    }

    static var settings: AuthorizationSettings {
        let reads: Set<String> = ["GetCapabilities", "FindMissingBlobs", "BatchReadBlobs", "Read", "GetActionResult"]
        return AuthorizationSettings(
            method: .jwt(JWTSettings(algorithm: .hs256, keys: .secret(secret), audiences: ["strata"])),
            accessControl: AccessControlList(rules: [
                "main": .entries([
                    .init(actor: try! .init("reader"), requests: reads),
                    .init(actor: try! .init("writer")),
                ]),
                "open": .all,
            ]),
            allowUnauthenticatedInstances: ["open"])
    }

    func bearer(_ actor: String, secret: String = secret) async throws -> Metadata {
        ["authorization": "Bearer \(try await TokenMaker.hs256(TestClaims(sub: actor, aud: ["strata"]), secret: secret))"]
    }

    static func status(_ call: @Sendable () async throws -> Void) async -> (RPCError.Code, String)? {
        do {
            try await call()
            return nil
        } catch let error as RPCError {
            return (error.code, error.message)
        } catch {
            return (.unknown, "\(error)")
        }
    }

    @Test func tokensACLAndCapabilities() async throws {
        try await withAuthorizedServer(Self.settings) { client in
            let cas = CAS(wrapping: client)
            let ac = AC(wrapping: client)
            let capabilities = Capabilities(wrapping: client)
            let find = Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with { $0.instanceName = "main" }
            let update = Build_Bazel_Remote_Execution_V2_UpdateActionResultRequest.with {
                $0.instanceName = "main"
                $0.actionDigest = .with { $0.hash = String(repeating: "a", count: 64); $0.sizeBytes = 1 }
                $0.actionResult = .with { $0.exitCode = 1 }
            }

            let missing = await Self.status { _ = try await cas.findMissingBlobs(find) }
            #expect(missing?.0 == .unauthenticated && missing?.1.contains("no token") == true, "\(String(describing: missing))")
            let forgedToken = try await bearer("reader", secret: "a wrong secret that is long enough for HS256")
            let forged = await Self.status { _ = try await cas.findMissingBlobs(find, metadata: forgedToken) }
            #expect(forged?.0 == .unauthenticated && forged?.1.contains("bad signature") == true, "\(String(describing: forged))")

            let reader = try await bearer("reader")
            let read = await Self.status { _ = try await cas.findMissingBlobs(find, metadata: reader) }
            #expect(read == nil, "\(String(describing: read))")
            let write = await Self.status { _ = try await ac.updateActionResult(update, metadata: reader) }
            #expect(write?.0 == .permissionDenied, "\(String(describing: write))")
            #expect(write?.1.contains("UpdateActionResult") == true && write?.1.contains("\"main\"") == true)

            let writer = try await bearer("writer")
            let written = await Self.status { _ = try await ac.updateActionResult(update, metadata: writer) }
            #expect(written == nil, "\(String(describing: written))")

            // Capabilities tells each caller whether it may write.
            let request = Build_Bazel_Remote_Execution_V2_GetCapabilitiesRequest.with { $0.instanceName = "main" }
            let forReader = try await capabilities.getCapabilities(request, metadata: reader)
            #expect(forReader.cacheCapabilities.actionCacheUpdateCapabilities.updateEnabled == false)
            let forWriter = try await capabilities.getCapabilities(request, metadata: writer)
            #expect(forWriter.cacheCapabilities.actionCacheUpdateCapabilities.updateEnabled == true)

            // An instance that allows unauthenticated requests serves one without a token, and one with a bad token.
            let open = Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with { $0.instanceName = "open" }
            let anonymous = await Self.status { _ = try await cas.findMissingBlobs(open) }
            #expect(anonymous == nil, "\(String(describing: anonymous))")
            let badToken = try await bearer("x", secret: "a wrong secret that is long enough for HS256")
            let withBadToken = await Self.status { _ = try await cas.findMissingBlobs(open, metadata: badToken) }
            #expect(withBadToken == nil, "\(String(describing: withBadToken))")

            // An instance name the server does not have: the caller is authenticated and authorized
            // first, so one without a valid token learns nothing of which instances exist.
            let unknown = Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with { $0.instanceName = "secret-project" }
            let probe = await Self.status { _ = try await cas.findMissingBlobs(unknown) }
            #expect(probe?.0 == .unauthenticated && probe?.1.contains("\"main\"") == false, "\(String(describing: probe))")
            let readerProbe = await Self.status { _ = try await cas.findMissingBlobs(unknown, metadata: reader) }
            #expect(readerProbe?.0 == .permissionDenied && readerProbe?.1.contains("\"main\"") == false, "\(String(describing: readerProbe))")
        }
    }

    @Test func loopbackPassesWithAllowLocalhostRequests() async throws {
        var settings = Self.settings
        settings.allowLocalhostRequests = true
        settings.accessControl = AccessControlList(rules: ["main": .entries([.init(requests: ["FindMissingBlobs"])])])
        try await withAuthorizedServer(settings) { client in
            let cas = CAS(wrapping: client)
            let ac = AC(wrapping: client)
            let local = await Self.status { _ = try await cas.findMissingBlobs(.with { $0.instanceName = "main" }) }
            #expect(local == nil, "\(String(describing: local))")
            // The ACL still applies to loopback requests.
            let get = await Self.status { _ = try await ac.getActionResult(.with {
                $0.instanceName = "main"
                $0.actionDigest = .with { $0.hash = String(repeating: "a", count: 64); $0.sizeBytes = 1 }
            }) }
            #expect(get?.0 == .permissionDenied, "\(String(describing: get))")
        }
    }
}
