import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataCore
@testable import StrataRemote
import StrataServer
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// A Capabilities service that records the headers of every call: what the client layer sends.
final class RecordingCapabilities: Build_Bazel_Remote_Execution_V2_Capabilities.ServiceProtocol, Sendable {
    let calls = Mutex<[Metadata]>([])
    let maxBatchTotalSizeBytes: Int64

    init(maxBatchTotalSizeBytes: Int64 = 4 << 20) { self.maxBatchTotalSizeBytes = maxBatchTotalSizeBytes }

    func getCapabilities(
        request: ServerRequest<Build_Bazel_Remote_Execution_V2_GetCapabilitiesRequest>, context: ServerContext
    ) async throws -> ServerResponse<Build_Bazel_Remote_Execution_V2_ServerCapabilities> {
        calls.withLock { $0.append(request.metadata) }
        return ServerResponse(message: .with { $0.cacheCapabilities.maxBatchTotalSizeBytes = maxBatchTotalSizeBytes })
    }

    var last: Metadata? { calls.withLock { $0.last } }
    /// The `authorization` headers of the last call.
    var lastAuthorization: [String] { last.map { Array($0[stringValues: "authorization"]) } ?? [] }
}

/// Runs `body` with the port of a gRPC server on 127.0.0.1 serving `recorder` with `security`.
func withRecordingServer<T: Sendable>(
    _ recorder: RecordingCapabilities, security: HTTP2ServerTransport.Posix.TransportSecurity = .plaintext,
    _ body: @Sendable (Int) async throws -> T
) async throws -> T {
    let server = GRPCServer(
        transport: HTTP2ServerTransport.Posix(address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: security),
        services: [recorder])
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await server.serve()
            return nil
        }
        guard let port = try await server.listeningAddress?.ipv4?.port else { throw StrataError.internal("no port") }
        defer { server.beginGracefulShutdown() }
        let result = try await body(port)
        server.beginGracefulShutdown()
        for try await _ in group {}
        return result
    }
}

/// Runs `body` with a channel to `url`, open for its duration.
func withRemoteChannel<T: Sendable>(
    _ url: String, _ options: RemoteChannel.Options = .init(), _ body: @Sendable (RemoteChannel) async throws -> T
) async throws -> T {
    let channel = try RemoteChannel(url: url, options: options)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await channel.run() }
        defer { channel.shutdown() }
        return try await body(channel)
    }
}

/// One GetCapabilities call through the channel's retry loop, uncached (`serverCapabilities` keeps its answer).
func capabilitiesCall(_ channel: RemoteChannel) async throws {
    _ = try await channel.call("GetCapabilities") { client in
        try await CapabilitiesClient(wrapping: client).getCapabilities(.init(), options: channel.callOptions)
    }
}

@Suite struct RemoteEndpointTests {
    @Test func schemesHostsPortsAndSockets() throws {
        #expect(try RemoteEndpoint(url: "grpc://cache:8980") == RemoteEndpoint(address: .host("cache", port: 8980), schemeRequiresTLS: false))
        #expect(try RemoteEndpoint(url: "http://cache:8980/") == RemoteEndpoint(address: .host("cache", port: 8980), schemeRequiresTLS: false))
        #expect(try RemoteEndpoint(url: "grpcs://cache:443") == RemoteEndpoint(address: .host("cache", port: 443), schemeRequiresTLS: true))
        #expect(try RemoteEndpoint(url: "https://cache") == RemoteEndpoint(address: .host("cache", port: 50051), schemeRequiresTLS: true))
        #expect(try RemoteEndpoint(url: "127.0.0.1:1234") == RemoteEndpoint(address: .host("127.0.0.1", port: 1234), schemeRequiresTLS: false))
        #expect(try RemoteEndpoint(url: "grpc://[::1]:9") == RemoteEndpoint(address: .host("::1", port: 9), schemeRequiresTLS: false))
        #expect(try RemoteEndpoint(url: "grpc://[::1]") == RemoteEndpoint(address: .host("::1", port: 50051), schemeRequiresTLS: false))
        #expect(try RemoteEndpoint(url: "unix:/run/cas.sock") == RemoteEndpoint(address: .unixSocket(path: "/run/cas.sock"), schemeRequiresTLS: false))
        #expect(try RemoteEndpoint(url: "unix:///run/cas.sock") == RemoteEndpoint(address: .unixSocket(path: "/run/cas.sock"), schemeRequiresTLS: false))
        #expect(try RemoteEndpoint(url: "grpc://[::1]:9").description == "[::1]:9")
    }

    @Test func badURLsSayWhatIsWrong() throws {
        for (url, words) in [("ftp://x:1", "unknown scheme"), ("grpc://x:0", "port"), ("grpc://x:http", "port"),
                             ("grpc://:80", "host"), ("grpc://x:1/path", "expected grpc://"), ("unix:", "unix:/PATH")] {
            #expect(throws: StrataError.self) { try RemoteEndpoint(url: url) }
            do { _ = try RemoteEndpoint(url: url) } catch { #expect(error.code == .invalidArgument && error.message.contains(words), "\(url): \(error)") }
        }
    }

    @Test func credentialsAreCheckedBeforeConnecting() throws {
        func refusal(_ url: String, _ credentials: RemoteCredentials) -> String? {
            var options = RemoteChannel.Options()
            options.credentials = credentials
            do { _ = try RemoteChannel(url: url, options: options); return nil } catch { return error.message }
        }
        #expect(refusal("grpcs://x:1", RemoteCredentials(tlsClientCertFile: "/etc/hostname"))?.contains("private key") == true)
        #expect(refusal("grpcs://x:1", RemoteCredentials(tlsCAFile: "/nonexistent-strata-test/ca.pem"))?.contains("/nonexistent-strata-test/ca.pem cannot be read") == true)
        #expect(refusal("grpc://x:1", RemoteCredentials(tokenFile: "/nonexistent-strata-test/token"))?.contains("token file") == true)
        #expect(refusal("grpc://x:1", RemoteCredentials(tlsCAFile: "/etc/hostname"))?.contains("use grpcs://") == true)
        #expect(refusal("grpcs://x:1", RemoteCredentials(tlsCAFile: "/etc/hostname"))?.isEmpty == false)  // not a PEM certificate
        #expect(refusal("grpcs://x:1", RemoteCredentials()) == nil)  // the system's roots
    }
}

@Suite struct RemoteChannelHeaderTests {
    @Test func bearerTokenFileIsReadAgainWhenItChanges() async throws {
        let folder = try ClientTestFolder()
        let tokenFile = folder.path + "/token"
        try "first-token\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let recorder = RecordingCapabilities()
        try await withRecordingServer(recorder) { port in
            var options = RemoteChannel.Options()
            options.credentials.tokenFile = tokenFile
            try await withRemoteChannel("grpc://127.0.0.1:\(port)", options) { channel in
                try await capabilitiesCall(channel)
                #expect(recorder.lastAuthorization == ["Bearer first-token"])
                // Renewed on disk (a new file, as a token agent writes it): the next call sends it.
                try "second-token".write(toFile: tokenFile, atomically: true, encoding: .utf8)
                try await capabilitiesCall(channel)
                #expect(recorder.lastAuthorization == ["Bearer second-token"])
                // Gone: the call fails on the client, saying which file.
                try FileManager.default.removeItem(atPath: tokenFile)
                do {
                    try await capabilitiesCall(channel)
                    Issue.record("a call without its token file succeeded")
                } catch let error as StrataError {
                    #expect(error.code == .unauthenticated && error.message.contains(tokenFile))
                }
            }
        }
    }

    @Test func requestMetadataOfTheRequestServedIsPassedOn() async throws {
        let recorder = RecordingCapabilities()
        try await withRecordingServer(recorder) { port in
            var options = RemoteChannel.Options()
            options.requestMetadata = ClientCommandInput.requestMetadata(version: "9.9")
            try await withRemoteChannel("grpc://127.0.0.1:\(port)", options) { channel in
                func sentMetadata() throws -> Build_Bazel_Remote_Execution_V2_RequestMetadata? {
                    guard let bytes = recorder.last?[binaryValues: RemoteCallHeadersInterceptor.requestMetadataKey].first(where: { _ in true })
                    else { return nil }
                    return try Build_Bazel_Remote_Execution_V2_RequestMetadata(serializedBytes: bytes)
                }
                // Outside a request (a client command): the channel's own.
                try await capabilitiesCall(channel)
                #expect(try sentMetadata()?.toolDetails.toolName == "strata")
                #expect(try sentMetadata()?.toolDetails.toolVersion == "9.9")
                // For a request being served: the client's, as it sent it.
                var bazel = ClientRequestMetadata()
                bazel.toolName = "bazel"
                bazel.toolInvocationID = "invocation-1"
                bazel.actionMnemonic = "CppCompile"
                let context = RequestContext(service: "s", method: "FindMissingBlobs", peer: "ipv4:127.0.0.1:1", metadata: bazel)
                try await RequestContext.$current.withValue(context) { try await capabilitiesCall(channel) }
                let sent = try sentMetadata()
                #expect(sent?.toolDetails.toolName == "bazel")
                #expect(sent?.toolInvocationID == "invocation-1")
                #expect(sent?.actionMnemonic == "CppCompile")
                #expect(recorder.lastAuthorization.isEmpty)
            }
        }
    }

    @Test func unixSocketEndpoint() async throws {
        let folder = try ClientTestFolder()
        let socket = folder.path + "/cas.sock"
        let recorder = RecordingCapabilities()
        let server = GRPCServer(
            transport: HTTP2ServerTransport.Posix(address: .unixDomainSocket(path: socket), transportSecurity: .plaintext),
            services: [recorder])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.serve() }
            defer { server.beginGracefulShutdown() }
            _ = try await server.listeningAddress
            try await withRemoteChannel("unix:\(socket)") { channel in try await capabilitiesCall(channel) }
            #expect(recorder.calls.withLock { $0.count } == 1)
        }
    }

    @Test func capabilitiesAreAskedOnceForTheBatchLimit() async throws {
        let recorder = RecordingCapabilities(maxBatchTotalSizeBytes: 100_000)
        try await withRecordingServer(recorder) { port in
            try await withRemoteChannel("grpc://127.0.0.1:\(port)") { channel in
                #expect(await channel.batchLimit(configured: 2 << 20) == 100_000)
                #expect(await channel.batchLimit(configured: 50_000) == 50_000)
                #expect(recorder.calls.withLock { $0.count } == 1)
            }
        }
    }

    /// A remote whose batch limit is below the store's own: batches are cut to the remote's limit, not
    /// refused by it (before, 2 MiB batches got INVALID_ARGUMENT from a remote allowing 64 KiB).
    @Test func batchesFollowThePeersAnnouncedLimit() async throws {
        let store = LRUBlobStore(capacityBytes: 64 << 20)
        let instance = Instance(name: "", cas: .init(store: store, readOnly: false), byteStream: .init(store: store, readOnly: false))
        try await withServer([instance], maxBatchTotalSizeBytes: 64 << 10) { clients in
            let remote = try RemoteBlobStore(url: "grpc://127.0.0.1:\(clients.port)")
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await remote.channel.run() }
                defer { remote.channel.shutdown() }
                let blobs = (0..<40).map { _ in Blob.random(size: 20_000) }
                for result in await remote.writeBatch(blobs.map { ($0.digest, $0.data) }) { try result.get() }
                for (blob, result) in zip(blobs, await remote.readBatch(blobs.map(\.digest))) { #expect(try result.get() == blob.data) }
            }
        }
    }
}

/// A folder under the system's temporary directory, removed when the value is released.
final class ClientTestFolder: Sendable {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "strata-client-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Certificates made by `openssl` for a test: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, all signed by the CA, with EC keys (fast to make).
struct ClientTestCertificates {
    let folder: ClientTestFolder
    var ca: String { folder.path + "/ca.pem" }
    var serverCert: String { folder.path + "/server.pem" }
    var serverKey: String { folder.path + "/server.key" }
    var clientCert: String { folder.path + "/client.pem" }
    var clientKey: String { folder.path + "/client.key" }

    init() throws {
        folder = try ClientTestFolder()
        let dir = folder.path
        try "subjectAltName=IP:127.0.0.1\n".write(toFile: dir + "/server.ext", atomically: true, encoding: .utf8)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try Self.openssl(["req", "-x509"] + ec + ["-keyout", dir + "/ca.key", "-out", dir + "/ca.pem", "-days", "2", "-subj", "/CN=strata test CA"])
        for name in ["server", "client"] {
            try Self.openssl(["req"] + ec + ["-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).csr", "-subj", "/CN=strata test \(name)"])
            try Self.openssl(["x509", "-req", "-in", "\(dir)/\(name).csr", "-CA", dir + "/ca.pem", "-CAkey", dir + "/ca.key",
                              "-CAcreateserial", "-out", "\(dir)/\(name).pem", "-days", "2"]
                             + (name == "server" ? ["-extfile", dir + "/server.ext"] : []))
        }
    }

    static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw StrataError.internal("openssl \(arguments.joined(separator: " ")) failed") }
    }

    var serverTLS: HTTP2ServerTransport.Posix.TransportSecurity {
        .tls(certificateChain: [.file(path: serverCert, format: .pem)], privateKey: .file(path: serverKey, format: .pem))
    }

    var serverMutualTLS: HTTP2ServerTransport.Posix.TransportSecurity {
        .mTLS(certificateChain: [.file(path: serverCert, format: .pem)], privateKey: .file(path: serverKey, format: .pem)) {
            $0.trustRoots = .certificates([.file(path: ca, format: .pem)])
            $0.clientCertificateVerification = .noHostnameVerification
        }
    }
}

@Suite struct RemoteChannelTLSTests {
    /// Options that fail fast: no retries, a short call timeout.
    static func options(_ credentials: RemoteCredentials) -> RemoteChannel.Options {
        var options = RemoteChannel.Options()
        options.credentials = credentials
        options.retries = 0
        options.requestTimeout = .seconds(15)  // generous: a loaded test run is slow to handshake
        return options
    }

    static func succeeds(_ url: String, _ credentials: RemoteCredentials) async -> Bool {
        do {
            try await withRemoteChannel(url, options(credentials)) { try await capabilitiesCall($0) }
            return true
        } catch {
            return false
        }
    }

    @Test func tlsWithTheCAWorksAndPlaintextOrUnknownRootsFail() async throws {
        let certificates = try ClientTestCertificates()
        try await withRecordingServer(RecordingCapabilities(), security: certificates.serverTLS) { port in
            #expect(await Self.succeeds("grpcs://127.0.0.1:\(port)", RemoteCredentials(tlsCAFile: certificates.ca)))
            #expect(await Self.succeeds("https://127.0.0.1:\(port)", RemoteCredentials(tlsCAFile: certificates.ca)))
            // A plaintext client to a TLS server.
            #expect(await !Self.succeeds("grpc://127.0.0.1:\(port)", RemoteCredentials()))
            // The system's roots do not know the test CA.
            #expect(await !Self.succeeds("grpcs://127.0.0.1:\(port)", RemoteCredentials()))
        }
    }

    @Test func mutualTLSNeedsTheClientCertificate() async throws {
        let certificates = try ClientTestCertificates()
        let recorder = RecordingCapabilities()
        try await withRecordingServer(recorder, security: certificates.serverMutualTLS) { port in
            let url = "grpcs://127.0.0.1:\(port)"
            #expect(await !Self.succeeds(url, RemoteCredentials(tlsCAFile: certificates.ca)))
            #expect(recorder.calls.withLock { $0.isEmpty })
            #expect(await Self.succeeds(url, RemoteCredentials(
                tlsCAFile: certificates.ca, tlsClientCertFile: certificates.clientCert, tlsClientKeyFile: certificates.clientKey)))
            // A token travels over TLS too.
            var credentials = RemoteCredentials(
                tlsCAFile: certificates.ca, tlsClientCertFile: certificates.clientCert, tlsClientKeyFile: certificates.clientKey)
            credentials.token = "secret"
            #expect(await Self.succeeds(url, credentials))
            #expect(recorder.lastAuthorization == ["Bearer secret"])
        }
    }
}
