import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataConfig
import StrataCore
import StrataServer
import StrataTestSupport
import Testing

/// Mutual TLS as the identity the ACL judges, end to end from a YAML configuration: a `!channel`
/// with `tls-client-certs` and `authorization: {method: none, acl-config: FILE}`, loaded by
/// `Configuration.parse` and served as `strata serve` builds its server. The actors in the ACL file
/// are the RFC 4514 subjects the server derives from the verified client certificates.
@Suite struct MutualTLSAuthorizationTests {
    static let writer = "CN=ci-runner,O=Strata Tests"
    static let reader = "CN=dev-laptop,O=Strata Tests"

    static func yaml(_ certificates: TestCertificates) -> String {
        """
        server:
          - !channel
            address: 127.0.0.1:0
            insecure-mode: false
            credentials:
              tls-server-key: \(certificates.path("server.key"))
              tls-server-cert: \(certificates.path("server.pem"))
              tls-client-certs: \(certificates.path("clients-ca.pem"))
        storages:
          - !lru-storage &cas
            size: 1M
        caches:
          - !lru-action-cache &ac
            storage: *cas
            max-cached-refs: 100
            allow-updates: true
        instances:
          - name: main
            services:
              - !cas
                storage: *cas
              - !bytestream
                storage: *cas
              - !action-cache
                cache: *ac
        authorization:
          method: none
          acl-config: \(certificates.path("acl.yml"))
        """
    }

    /// The CI runner may do everything on `main`; the developer's laptop may only read.
    static let acl = """
        main:
          allow:
            - actor: "\(writer)"
            - actor: "\(reader)"
              requests: [GetCapabilities, FindMissingBlobs, BatchReadBlobs, Read, GetActionResult]
        """

    /// Loads the configuration and starts the server as `Serve.run` does (Sources/strata/Strata.swift:
    /// the same `Configuration` fields into the same `StrataServer` parameters), then calls `body`
    /// with its port.
    func withConfiguredServer(_ yaml: String, _ body: @Sendable (_ port: Int) async throws -> Void) async throws {
        let configuration = try Configuration.parse(yaml: yaml, file: "mtls.yml", environment: [:])
        try await configuration.prepare()
        let server = try StrataServer(
            registry: configuration.registry, modules: configuration.modules,
            addresses: configuration.addresses, eventLoops: 1,
            policies: configuration.connectionPolicies,
            health: HealthStatus(readiness: configuration.readiness),
            metrics: configuration.monitoring?.rpcMetrics,
            authentication: configuration.authentication,
            tls: configuration.tls, concurrencyLimits: configuration.concurrencyLimits)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
            try await body(port)
            server.beginGracefulShutdown()
            try await group.waitForAll()
        }
    }

    /// Runs `body` with clients on one connection that presents `certificate`.
    func asClient(
        _ certificates: TestCertificates, port: Int, presenting certificate: String,
        _ body: @Sendable (CASClient, ActionCacheClient, CapabilitiesClient) async throws -> Void
    ) async throws {
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port),
            transportSecurity: clientSecurity(certificates, trusting: "ca", presenting: certificate))
        try await withGRPCClient(transport: transport) { client in
            try await body(CASClient(wrapping: client), ActionCacheClient(wrapping: client), CapabilitiesClient(wrapping: client))
        }
    }

    @Test func clientCertificateSubjectsAreTheActorsOfTheACL() async throws {
        let certificates = try TestCertificates()
        try certificates.makeAuthority("ca")
        try certificates.makeAuthority("clients-ca")
        try certificates.makeServer("server", signedBy: "ca")
        try certificates.makeClient("ci", signedBy: "clients-ca", subject: "/O=Strata Tests/CN=ci-runner")
        try certificates.makeClient("laptop", signedBy: "clients-ca", subject: "/O=Strata Tests/CN=dev-laptop")
        try certificates.makeClient("stranger", signedBy: "clients-ca", subject: "/O=Elsewhere/CN=ci-runner")
        try Self.acl.write(toFile: certificates.path("acl.yml"), atomically: true, encoding: .utf8)

        let blob = Blob.random(size: 1000)
        let actionDigest = Blob.random(size: 100).digest.proto
        let result = Build_Bazel_Remote_Execution_V2_ActionResult.with {
            $0.exitCode = 0
            $0.stdoutDigest = blob.digest.proto
        }
        let upload = Build_Bazel_Remote_Execution_V2_BatchUpdateBlobsRequest.with {
            $0.instanceName = "main"
            $0.requests = [.with { $0.digest = blob.digest.proto; $0.data = blob.data }]
        }
        let update = Build_Bazel_Remote_Execution_V2_UpdateActionResultRequest.with {
            $0.instanceName = "main"
            $0.actionDigest = actionDigest
            $0.actionResult = result
        }
        let find = Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with {
            $0.instanceName = "main"
            $0.blobDigests = [blob.digest.proto]
        }
        let download = Build_Bazel_Remote_Execution_V2_BatchReadBlobsRequest.with {
            $0.instanceName = "main"
            $0.digests = [blob.digest.proto]
        }
        let get = Build_Bazel_Remote_Execution_V2_GetActionResultRequest.with {
            $0.instanceName = "main"
            $0.actionDigest = actionDigest
        }
        let capabilities = Build_Bazel_Remote_Execution_V2_GetCapabilitiesRequest.with { $0.instanceName = "main" }

        try await withConfiguredServer(Self.yaml(certificates)) { port in
            // The reader first: before anything is written, so nothing it is refused can have happened.
            try await asClient(certificates, port: port, presenting: "laptop") { cas, actionCache, capabilitiesClient in
                let refusedUpload = await rpcFailure { _ = try await cas.batchUpdateBlobs(upload) }
                #expect(refusedUpload?.code == .permissionDenied, "\(String(describing: refusedUpload))")
                #expect(refusedUpload?.message.contains("BatchUpdateBlobs") == true, "\(String(describing: refusedUpload))")
                #expect(refusedUpload?.message.contains("instance \"main\"") == true, "\(String(describing: refusedUpload))")
                #expect(refusedUpload?.message.contains(Self.reader) == true, "\(String(describing: refusedUpload))")
                let refusedUpdate = await rpcFailure { _ = try await actionCache.updateActionResult(update) }
                #expect(refusedUpdate?.code == .permissionDenied, "\(String(describing: refusedUpdate))")
                #expect(refusedUpdate?.message.contains("UpdateActionResult") == true, "\(String(describing: refusedUpdate))")
                #expect(refusedUpdate?.message.contains("instance \"main\"") == true, "\(String(describing: refusedUpdate))")
                let forReader = try await capabilitiesClient.getCapabilities(capabilities)
                #expect(forReader.cacheCapabilities.actionCacheUpdateCapabilities.updateEnabled == false)
                #expect(try await cas.findMissingBlobs(find).missingBlobDigests == [blob.digest.proto], "the refused upload stored nothing")
            }

            try await asClient(certificates, port: port, presenting: "ci") { cas, actionCache, capabilitiesClient in
                let uploaded = try await cas.batchUpdateBlobs(upload)
                #expect(uploaded.responses.map(\.status.code) == [0], "\(uploaded)")
                let stored = try await actionCache.updateActionResult(update)
                #expect(stored.stdoutDigest == blob.digest.proto)
                let forWriter = try await capabilitiesClient.getCapabilities(capabilities)
                #expect(forWriter.cacheCapabilities.actionCacheUpdateCapabilities.updateEnabled == true)
            }

            // The reader's reads see what the writer wrote.
            try await asClient(certificates, port: port, presenting: "laptop") { cas, actionCache, _ in
                #expect(try await cas.findMissingBlobs(find).missingBlobDigests.isEmpty)
                let read = try await cas.batchReadBlobs(download)
                #expect(read.responses.map(\.status.code) == [0] && read.responses.first?.data == blob.data)
                let cached = try await actionCache.getActionResult(get)
                #expect(cached.stdoutDigest == blob.digest.proto)
            }

            // A certificate from the same CA whose subject the ACL does not name reads nothing: the
            // actor is the whole subject, not its common name.
            try await asClient(certificates, port: port, presenting: "stranger") { cas, _, capabilitiesClient in
                let refused = await rpcFailure { _ = try await cas.findMissingBlobs(find) }
                #expect(refused?.code == .permissionDenied, "\(String(describing: refused))")
                #expect(refused?.message.contains("CN=ci-runner,O=Elsewhere") == true, "\(String(describing: refused))")
                let refusedCapabilities = await rpcFailure { _ = try await capabilitiesClient.getCapabilities(capabilities) }
                #expect(refusedCapabilities?.code == .permissionDenied, "\(String(describing: refusedCapabilities))")
            }
        }
    }
}
