import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// Passes every call to an LRU store, recording the principal each FindMissingBlobs ran as.
private final class PrincipalRecordingStore: BlobStore {
    let base = LRUBlobStore(capacityBytes: 64 << 20)
    private let seen = Mutex<[Principal]>([])

    var principals: [Principal] { seen.withLock { $0 } }

    func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let principal = RequestContext.current?.principal ?? .anonymous
        seen.withLock { $0.append(principal) }
        return try await base.findMissing(digests)
    }
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await base.read(digest, offset: offset, limit: limit)
    }
    func write(_ digest: Digest, body: BlobBody) async throws { try await base.write(digest, body: body) }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }
}

/// Runs a server on 127.0.0.1 whose one address is served with `tls`, calls `body` with its port.
private func withTLSServer(
    _ tls: TLSCredentials, store: any BlobStore = LRUBlobStore(capacityBytes: 16 << 20),
    _ body: @Sendable (_ port: Int) async throws -> Void
) async throws {
    let address = ListenAddress(.tcp(host: "127.0.0.1", port: 0))
    let instance = Instance(name: "", cas: .init(store: store), byteStream: .init(store: store), actionCache: nil)
    let server = try StrataServer(
        registry: InstanceRegistry([instance]), addresses: [address], eventLoops: 2, tls: [address: tls])
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
        try await body(port)
        server.beginGracefulShutdown()
        try await group.waitForAll()
    }
}

/// One FindMissingBlobs on a new connection with `security`: nil when it succeeded, else its status
/// code (`unknown` for an error that is no RPC status). Not waiting for the connection, so a refused
/// handshake fails the call instead of retrying.
private func findMissingStatus(port: Int, _ security: HTTP2ClientTransport.Posix.TransportSecurity) async -> RPCError.Code? {
    do {
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: security)
        return try await withGRPCClient(transport: transport) { client in
            var options = CallOptions.defaults
            options.waitForReady = false
            options.timeout = .seconds(30)
            _ = try await CASClient(wrapping: client).findMissingBlobs(.with { $0.blobDigests = [] }, options: options)
            return nil
        }
    } catch let error as RPCError {
        return error.code
    } catch {
        return .unknown
    }
}

/// A client trusting the CA `authority` only, presenting `certificate` (`NAME.pem`/`NAME.key`) if given.
func clientSecurity(
    _ certificates: TestCertificates, trusting authority: String, presenting certificate: String? = nil
) -> HTTP2ClientTransport.Posix.TransportSecurity {
    .tls { tls in
        tls.trustRoots = .certificates([.file(path: certificates.path("\(authority).pem"), format: .pem)])
        tls.serverCertificateVerification = .fullVerification
        if let certificate {
            tls.certificateChain = [.file(path: certificates.path("\(certificate).pem"), format: .pem)]
            tls.privateKey = .file(path: certificates.path("\(certificate).key"), format: .pem)
        }
    }
}

@Suite struct TLSTests {
    /// A client that trusts the server's CA is served over TLS; a plaintext client, or one trusting
    /// another CA, is not.
    @Test func tlsServesClientsTrustingItsAuthority() async throws {
        let certificates = try TestCertificates()
        try certificates.makeAuthority("ca")
        try certificates.makeAuthority("other-ca")
        try certificates.makeServer("server", signedBy: "ca")
        let tls = TLSCredentials(serverKeyPath: certificates.path("server.key"), serverCertificatePath: certificates.path("server.pem"))
        try await withTLSServer(tls) { port in
            #expect(await findMissingStatus(port: port, clientSecurity(certificates, trusting: "ca")) == nil)
            #expect(await findMissingStatus(port: port, .plaintext) == .unavailable)
            #expect(await findMissingStatus(port: port, clientSecurity(certificates, trusting: "other-ca")) == .unavailable)
        }
    }

    /// With `tls-client-certs`, a client without a certificate, or with one from another CA, is refused
    /// at the handshake; one with a certificate from those CAs is served, and its subject is the
    /// request's principal.
    @Test func mutualTLSRequiresAClientCertificateFromItsAuthorities() async throws {
        let certificates = try TestCertificates()
        try certificates.makeAuthority("ca")
        try certificates.makeAuthority("clients-ca")
        try certificates.makeAuthority("other-ca")
        try certificates.makeServer("server", signedBy: "ca")
        try certificates.makeClient("ci", signedBy: "clients-ca", subject: "/O=Strata Tests/CN=ci-runner")
        try certificates.makeClient("stranger", signedBy: "other-ca", subject: "/CN=stranger")
        let tls = TLSCredentials(
            serverKeyPath: certificates.path("server.key"), serverCertificatePath: certificates.path("server.pem"),
            clientCertificateAuthoritiesPath: certificates.path("clients-ca.pem"))
        let store = PrincipalRecordingStore()
        try await withTLSServer(tls, store: store) { port in
            #expect(await findMissingStatus(port: port, clientSecurity(certificates, trusting: "ca")) == .unavailable)
            #expect(await findMissingStatus(port: port, clientSecurity(certificates, trusting: "ca", presenting: "stranger")) == .unavailable)
            #expect(await findMissingStatus(port: port, .plaintext) == .unavailable)
            #expect(await findMissingStatus(port: port, clientSecurity(certificates, trusting: "ca", presenting: "ci")) == nil)
        }
        #expect(store.principals == [Principal(source: .clientCertificate, actor: "CN=ci-runner,O=Strata Tests")])
    }

    /// A certificate replaced on disk (here by one from another CA) is what new connections get once
    /// the server has read it again, without a restart.
    @Test func certificateReplacedOnDiskIsServedWithoutRestart() async throws {
        let certificates = try TestCertificates()
        try certificates.makeAuthority("ca")
        try certificates.makeAuthority("renewal-ca")
        try certificates.makeServer("server", signedBy: "ca")
        try certificates.makeServer("renewed", signedBy: "renewal-ca")
        let tls = TLSCredentials(
            serverKeyPath: certificates.path("server.key"), serverCertificatePath: certificates.path("server.pem"),
            reloadInterval: .milliseconds(100))
        try await withTLSServer(tls) { port in
            let old = clientSecurity(certificates, trusting: "ca")
            let new = clientSecurity(certificates, trusting: "renewal-ca")
            #expect(await findMissingStatus(port: port, old) == nil)
            #expect(await findMissingStatus(port: port, new) == .unavailable)
            try certificates.replace("server", with: "renewed")
            // Read again every 100 ms: bounded retries, never forever.
            var served = false
            for _ in 0..<100 where !served {
                served = await findMissingStatus(port: port, new) == nil
                if !served { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(served, "the renewed certificate was not served within 10 s")
            #expect(await findMissingStatus(port: port, old) == .unavailable)
        }
    }

    /// `tls-client-certs` replaced on disk (a rotated client CA bundle) is what new connections are
    /// verified against, without a restart: clients of the new CA are accepted, those of the old refused.
    @Test func clientAuthoritiesReplacedOnDiskAreUsedWithoutRestart() async throws {
        let certificates = try TestCertificates()
        try certificates.makeAuthority("ca")
        try certificates.makeAuthority("clients-ca")
        try certificates.makeAuthority("next-clients-ca")
        try certificates.makeServer("server", signedBy: "ca")
        try certificates.makeClient("ci", signedBy: "clients-ca", subject: "/CN=ci-runner")
        try certificates.makeClient("next-ci", signedBy: "next-clients-ca", subject: "/CN=next-ci-runner")
        try certificates.replace("trusted-clients", with: "clients-ca")
        let tls = TLSCredentials(
            serverKeyPath: certificates.path("server.key"), serverCertificatePath: certificates.path("server.pem"),
            clientCertificateAuthoritiesPath: certificates.path("trusted-clients.pem"))
        try await withTLSServer(tls) { port in
            let current = clientSecurity(certificates, trusting: "ca", presenting: "ci")
            let next = clientSecurity(certificates, trusting: "ca", presenting: "next-ci")
            #expect(await findMissingStatus(port: port, current) == nil)
            #expect(await findMissingStatus(port: port, next) == .unavailable)
            try certificates.replace("trusted-clients", with: "next-clients-ca")
            // Read again by the next handshake: no waiting for a reload period.
            #expect(await findMissingStatus(port: port, next) == nil)
            #expect(await findMissingStatus(port: port, current) == .unavailable)
            // A file that no longer parses keeps the CAs read before.
            try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: certificates.path("trusted-clients.pem")))
            #expect(await findMissingStatus(port: port, next) == nil)
            #expect(await findMissingStatus(port: port, current) == .unavailable)
        }
    }

    /// A missing or mismatched file stops the server from starting, naming the option and the file.
    @Test func badCredentialsAreRefusedAtStart() throws {
        let certificates = try TestCertificates()
        try certificates.makeAuthority("ca")
        try certificates.makeServer("server", signedBy: "ca")
        try certificates.makeServer("other", signedBy: "ca")
        let address = ListenAddress(.tcp(host: "127.0.0.1", port: 0))
        func startError(_ tls: TLSCredentials) -> String? {
            do {
                _ = try StrataServer(registry: InstanceRegistry([memoryInstance()]), addresses: [address], eventLoops: 1, tls: [address: tls])
                return nil
            } catch {
                return error.message
            }
        }
        let missing = startError(TLSCredentials(serverKeyPath: certificates.path("nope.key"), serverCertificatePath: certificates.path("server.pem")))
        #expect(missing?.contains("tls-server-key \"\(certificates.path("nope.key"))\" does not exist") == true, "\(missing ?? "started")")
        let mismatched = startError(TLSCredentials(serverKeyPath: certificates.path("other.key"), serverCertificatePath: certificates.path("server.pem")))
        #expect(mismatched?.contains("is not the key of tls-server-cert") == true, "\(mismatched ?? "started")")
        let notACertificate = startError(TLSCredentials(
            serverKeyPath: certificates.path("server.key"), serverCertificatePath: certificates.path("server.pem"),
            clientCertificateAuthoritiesPath: certificates.path("server.key")))
        #expect(notACertificate?.contains("tls-client-certs") == true, "\(notACertificate ?? "started")")
    }
}
