import Crypto
import Foundation
import Hummingbird
import HummingbirdBcrypt
import HummingbirdTesting
import StrataAPI
import StrataActionCache
import StrataAuth
import StrataCompression
import StrataConfig
import StrataCore
import StrataHTTP
import StrataHTTPCache
import StrataServer
import Testing

/// Bazel's HTTP cache protocol through `!http-channel`'s handlers, driven by Hummingbird's router test
/// client on configurations loaded as `strata serve` loads them.
@Suite struct HTTPCacheTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-http-cache-\(UUID().uuidString)").path

    init() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    /// `storage` and `cache`: a tag, then its options' lines.
    static func yaml(
        storage: String = "!lru-storage\n    size: 16M",
        cache: String = "!lru-action-cache\n    storage: *cas\n    max-cached-refs: 100\n    allow-updates: true",
        authorization: String = "", httpOptions: String = ""
    ) -> String {
        func anchored(_ item: String, _ anchor: String) -> String {
            item.replacingOccurrences(of: "\n", with: " &\(anchor)\n", options: [], range: item.range(of: "\n"))
                .replacingOccurrences(of: "\n", with: "\n  ")
        }
        return """
        server:
          - !channel
            address: 127.0.0.1:0
          - !http-channel
            address: 127.0.0.1:0
            \(httpOptions)
        storages:
          - \(anchored(storage, "cas"))
        caches:
          - \(anchored(cache, "results"))
        instances:
          - name: ""
            services:
              - !cas
                storage: *cas
              - !bytestream
                storage: *cas
              - !action-cache
                cache: *results
          - name: other/team
            services:
              - !cas
                storage: *cas
              - !action-cache
                cache: *results
        \(authorization)
        """
    }

    /// The configuration of `yaml`, its HTTP cache, and a router test client on it.
    func withCache<Value>(
        _ yaml: String, _ body: @Sendable (Configuration, any TestClientProtocol) async throws -> Value
    ) async throws -> Value {
        let configuration = try Configuration.parse(yaml: yaml, file: "\(scratch)/strata.yml")
        try await configuration.prepare()
        let channel = try #require(configuration.httpCaches.first)
        let cache = HTTPCache(
            settings: channel.settings, registry: configuration.registry, sizeIndexes: configuration.blobSizeIndexes,
            authentication: configuration.authentication, accessLog: nil, metrics: nil)
        let app = Application(router: HTTPListener.router(cache.routes))
        return try await app.test(.router) { client in try await body(configuration, client) }
    }

    static func sha256(_ data: Data) -> String { Digest.of(data).hash }

    static func body(_ data: Data) -> ByteBuffer { ByteBuffer(bytes: data) }

    static func actionResult(outputs: [(String, Data)]) -> ActionResult {
        var result = ActionResult()
        result.exitCode = 0
        for (path, data) in outputs {
            var file = Build_Bazel_Remote_Execution_V2_OutputFile()
            file.path = path
            file.digest.hash = sha256(data)
            file.digest.sizeBytes = Int64(data.count)
            result.outputFiles.append(file)
        }
        return result
    }

    @Test func blobRoundTripsWithItsLengthAndType() async throws {
        let blob = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let hash = Self.sha256(blob)
        try await withCache(Self.yaml()) { _, client in
            let put = try await client.execute(uri: "/cas/\(hash)", method: .put, headers: [:], body: Self.body(blob))
            #expect(put.status == .ok)
            let get = try await client.execute(uri: "/cas/\(hash)", method: .get)
            #expect(get.status == .ok)
            #expect(Data(buffer: get.body) == blob)
            #expect(get.headers[.contentLength] == "300000")
            #expect(get.headers[.contentType] == "application/octet-stream")
            let head = try await client.execute(uri: "/cas/\(hash)", method: .head)
            #expect(head.status == .ok)
            #expect(head.headers[.contentLength] == "300000")
            #expect(head.body.readableBytes == 0)
        }
    }

    @Test func aBodyThatIsNotItsHashIsRefusedAndNothingIsStored() async throws {
        let blob = Data("not what the path says".utf8)
        let claimed = Self.sha256(Data("something else".utf8))
        try await withCache(Self.yaml()) { configuration, client in
            let put = try await client.execute(uri: "/cas/\(claimed)", method: .put, headers: [:], body: Self.body(blob))
            #expect(put.status == .badRequest)
            let message = String(buffer: put.body)
            #expect(message.contains(claimed) && message.contains(Self.sha256(blob)), "\(message)")
            let store = try #require(configuration.registry.instances[""]?.cas?.store)
            let digest = try Digest(hash: claimed, sizeBytes: Int64(blob.count))
            #expect(try await store.findMissing([digest]) == [digest])
            #expect(try await client.execute(uri: "/cas/\(claimed)", method: .get).status == .notFound)
        }
    }

    @Test func statusCodesOfMissingAndMalformedRequests() async throws {
        let absent = String(repeating: "ab", count: 32)
        try await withCache(Self.yaml()) { _, client in
            #expect(try await client.execute(uri: "/cas/\(absent)", method: .get).status == .notFound)
            #expect(try await client.execute(uri: "/cas/\(absent)", method: .head).status == .notFound)
            #expect(try await client.execute(uri: "/ac/\(absent)", method: .get).status == .notFound)
            #expect(try await client.execute(uri: "/ac/\(absent)", method: .head).status == .notFound)
            // Not hex, upper case, a length no digest function has.
            #expect(try await client.execute(uri: "/cas/\(String(repeating: "zz", count: 32))", method: .get).status == .badRequest)
            #expect(try await client.execute(uri: "/cas/\(absent.uppercased())", method: .get).status == .badRequest)
            #expect(try await client.execute(uri: "/cas/abc", method: .get).status == .badRequest)
            #expect(try await client.execute(uri: "/elsewhere/\(absent)", method: .get).status == .notFound)
            let unknown = try await client.execute(uri: "/nobody/cas/\(absent)", method: .get)
            #expect(unknown.status == .badRequest)
            #expect(String(buffer: unknown.body).contains("unknown instance name \"nobody\""))
            let gzip = try await client.execute(
                uri: "/cas/\(absent)", method: .put, headers: [.contentEncoding: "gzip"], body: ByteBuffer(string: "x"))
            #expect(gzip.status == .unsupportedMediaType)
            // zstd needs the uncompressed size (X-Digest-SizeBytes), as bazel-remote has it.
            let zstd = try await client.execute(
                uri: "/cas/\(absent)", method: .put, headers: [.contentEncoding: "zstd"], body: ByteBuffer(string: "x"))
            #expect(zstd.status == .badRequest)
            #expect(String(buffer: zstd.body).contains("X-Digest-SizeBytes"))
        }
    }

    /// `Content-Encoding: zstd` and bazel-remote's `X-Digest-SizeBytes`.
    static func zstdHeaders(size: Int) -> HTTPFields {
        var headers: HTTPFields = [.contentEncoding: "zstd"]
        headers.append(.init(name: .init("X-Digest-SizeBytes")!, value: String(size)))
        return headers
    }

    @Test func zstdBodiesUpAndDown() async throws {
        let blob = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 / 7) })
        let hash = Self.sha256(blob)
        let frame = try ZstdCompressor.compress(blob)
        try await withCache(Self.yaml()) { configuration, client in
            // Another blob's frame, a corrupt frame and a wrong declared size store nothing.
            let other = try ZstdCompressor.compress(Data(repeating: 7, count: blob.count))
            var corrupt = frame
            corrupt[corrupt.count / 2] ^= 0xff
            for (body, size) in [(other, blob.count), (corrupt, blob.count), (frame, blob.count + 1)] {
                let refused = try await client.execute(
                    uri: "/cas/\(hash)", method: .put,
                    headers: Self.zstdHeaders(size: size), body: Self.body(body))
                #expect(refused.status == .badRequest, "\(String(buffer: refused.body))")
            }
            let store = try #require(configuration.registry.instances[""]?.cas?.store)
            let digest = try Digest(hash: hash, sizeBytes: Int64(blob.count))
            #expect(try await store.findMissing([digest]) == [digest])

            let put = try await client.execute(
                uri: "/cas/\(hash)", method: .put,
                headers: Self.zstdHeaders(size: blob.count), body: Self.body(frame))
            #expect(put.status == .ok, "\(String(buffer: put.body))")
            #expect(try await store.readAll(digest) == blob)

            let compressed = try await client.execute(uri: "/cas/\(hash)", method: .get, headers: [.acceptEncoding: "gzip, zstd"])
            #expect(compressed.status == .ok)
            #expect(compressed.headers[.contentEncoding] == "zstd")
            let frameBack = Data(buffer: compressed.body)
            #expect(frameBack.count < blob.count / 4)
            #expect(try ZstdDecompressor.decompress(frameBack, expectedSize: Int64(blob.count), subject: "the answer") == blob)

            // zstd;q=0 and no Accept-Encoding: identity.
            for headers: HTTPFields in [[.acceptEncoding: "zstd;q=0"], [:]] {
                let plain = try await client.execute(uri: "/cas/\(hash)", method: .get, headers: headers)
                #expect(plain.headers[.contentEncoding] == nil)
                #expect(Data(buffer: plain.body) == blob)
            }
        }
    }

    @Test func bodiesPastTheLimitAreRefused() async throws {
        let blob = Data(repeating: 7, count: 2000)
        try await withCache(Self.yaml(httpOptions: "max-body-size: 1K")) { _, client async throws in
            let put = try await client.execute(uri: "/cas/\(Self.sha256(blob))", method: .put, headers: [:], body: Self.body(blob))
            #expect(put.status == .contentTooLarge)
            let ac = try await client.execute(uri: "/ac/\(Self.sha256(blob))", method: .put, headers: [:], body: Self.body(blob))
            #expect(ac.status == .contentTooLarge)
            #expect(try await client.execute(uri: "/cas/\(Self.sha256(blob))", method: .get).status == .notFound)
        }
    }

    @Test func theEmptyBlobIsAlwaysThere() async throws {
        try await withCache(Self.yaml()) { _, client in
            let get = try await client.execute(uri: "/cas/\(Digest.emptySHA256.hash)", method: .get)
            #expect(get.status == .ok)
            #expect(get.body.readableBytes == 0)
        }
    }

    @Test func actionResultsAreValidatedAndCheckedForCompleteness() async throws {
        let output = Data("an output".utf8)
        let action = Self.sha256(Data("an action".utf8))
        let result = Self.actionResult(outputs: [("out.txt", output)])
        let bytes: Data = try result.serializedBytes()
        try await withCache(Self.yaml()) { _, client in
            // Not an ActionResult.
            let garbage = try await client.execute(uri: "/ac/\(action)", method: .put, headers: [:], body: ByteBuffer(string: "\u{FF}\u{FF}\u{FF}"))
            #expect(garbage.status == .badRequest)
            // An ActionResult naming a malformed digest.
            var malformed = result
            malformed.outputFiles[0].digest.hash = "xyz"
            let invalid = try await client.execute(
                uri: "/ac/\(action)", method: .put, headers: [:], body: Self.body(try malformed.serializedBytes()))
            #expect(invalid.status == .badRequest)
            #expect(String(buffer: invalid.body).contains("action_result"))

            // Stored before its output: handed out only once the output is in the CAS.
            #expect(try await client.execute(uri: "/ac/\(action)", method: .put, headers: [:], body: Self.body(bytes)).status == .ok)
            #expect(try await client.execute(uri: "/ac/\(action)", method: .get).status == .notFound)
            #expect(try await client.execute(uri: "/ac/\(action)", method: .put, headers: [:], body: Self.body(bytes)).status == .ok)
            #expect(try await client.execute(uri: "/cas/\(Self.sha256(output))", method: .put, headers: [:], body: Self.body(output)).status == .ok)
            let get = try await client.execute(uri: "/ac/\(action)", method: .get)
            #expect(get.status == .ok)
            #expect(try ActionResult(serializedBytes: Data(buffer: get.body)) == result)
        }
    }

    @Test func blobsAndResultsCrossBetweenHTTPAndGRPC() async throws {
        let viaGRPC = Data("uploaded over gRPC".utf8)
        let viaHTTP = Data("uploaded over HTTP".utf8)
        let grpcAction = try Digest(hash: Self.sha256(Data("grpc action".utf8)), sizeBytes: 140)
        let httpAction = try Digest(hash: Self.sha256(Data("http action".utf8)), sizeBytes: 151)
        try await withCache(Self.yaml()) { configuration, client in
            // The instance as the gRPC services get it from the registry.
            let instance = try #require(configuration.registry.instances[""])
            let store = try #require(instance.cas?.store)
            let cache = try #require(instance.actionCache)

            try await store.write(Digest.of(viaGRPC), data: viaGRPC)
            let get = try await client.execute(uri: "/cas/\(Self.sha256(viaGRPC))", method: .get)
            #expect(get.status == .ok)
            #expect(Data(buffer: get.body) == viaGRPC)

            #expect(try await client.execute(uri: "/cas/\(Self.sha256(viaHTTP))", method: .put, headers: [:], body: Self.body(viaHTTP)).status == .ok)
            #expect(try await store.readAll(Digest.of(viaHTTP)) == viaHTTP)

            // UpdateActionResult over gRPC, GET /ac over HTTP.
            let grpcResult = Self.actionResult(outputs: [("g", viaGRPC)])
            try await cache.update(grpcAction, grpcResult)
            let fromHTTP = try await client.execute(uri: "/ac/\(grpcAction.hash)", method: .get)
            #expect(fromHTTP.status == .ok)
            #expect(try ActionResult(serializedBytes: Data(buffer: fromHTTP.body)) == grpcResult)

            // PUT /ac over HTTP, GetActionResult (hash and size) over gRPC.
            let httpResult = Self.actionResult(outputs: [("h", viaHTTP)])
            let put = try await client.execute(
                uri: "/ac/\(httpAction.hash)", method: .put, headers: [:], body: Self.body(try httpResult.serializedBytes()))
            #expect(put.status == .ok)
            #expect(try await cache.get(httpAction) == httpResult)
        }
    }

    @Test func anInstancePrefixAddressesThatInstance() async throws {
        let blob = Data("for the other team".utf8)
        let hash = Self.sha256(blob)
        try await withCache(Self.yaml()) { configuration, client in
            #expect(try await client.execute(uri: "/other/team/cas/\(hash)", method: .put, headers: [:], body: Self.body(blob)).status == .ok)
            let get = try await client.execute(uri: "/other/team/cas/\(hash)", method: .get)
            #expect(Data(buffer: get.body) == blob)
            // The two instances share one storage but not their size indexes: the default instance has
            // not seen the blob.
            #expect(configuration.blobSizeIndexes["other/team"]?.digest(hash: hash) != nil)
            #expect(configuration.blobSizeIndexes[""]?.digest(hash: hash) == nil)
        }
    }

    /// After a restart the size index is empty: a blob is found again through the action result that
    /// names it, as Bazel asks for it (`GET /ac/` first).
    @Test func afterARestartBlobsAreFoundThroughTheirActions() async throws {
        let output = Data("kept on disk".utf8)
        let action = Self.sha256(Data("persistent action".utf8))
        let result: Data = try Self.actionResult(outputs: [("kept", output)]).serializedBytes()
        let yaml = Self.yaml(
            storage: "!disk-storage\n    path: \(scratch)/cas\n    max-size: 16M",
            cache: "!disk-action-cache\n    path: \(scratch)/ac\n    max-size: 1M\n    storage: *cas\n    allow-updates: true")
        try await withCache(yaml) { _, client async throws in
            #expect(try await client.execute(uri: "/cas/\(Self.sha256(output))", method: .put, headers: [:], body: Self.body(output)).status == .ok)
            #expect(try await client.execute(uri: "/ac/\(action)", method: .put, headers: [:], body: Self.body(result)).status == .ok)
        }
        try await withCache(yaml) { _, client async throws in
            #expect(try await client.execute(uri: "/cas/\(Self.sha256(output))", method: .get).status == .notFound)
            #expect(try await client.execute(uri: "/ac/\(action)", method: .get).status == .ok)
            let get = try await client.execute(uri: "/cas/\(Self.sha256(output))", method: .get)
            #expect(get.status == .ok)
            #expect(Data(buffer: get.body) == output)
        }
    }

    // MARK: Authorization

    func htpasswdYAML(acl: Bool = false) throws -> String {
        // htpasswd -B writes $2y$; {SHA} is htpasswd -s.
        let bcrypt = Bcrypt.hash("s3cret", cost: 4).replacingOccurrences(of: "$2b$", with: "$2y$")
        try "alice:\(bcrypt)\n# a comment\nbob:{SHA}\(Data(Insecure.SHA1.hash(data: Data("hunter2".utf8))).base64EncodedString())\n"
            .write(toFile: "\(scratch)/htpasswd", atomically: true, encoding: .utf8)
        try """
        "":
          allow:
            - actor: alice
            - actor: bob
              requests: [GetActionResult, Read, FindMissingBlobs]
        other/team:
          allow: all
        """.write(toFile: "\(scratch)/acl.yml", atomically: true, encoding: .utf8)
        return Self.yaml(authorization: """
        authorization:
          method: htpasswd
          htpasswd: \(scratch)/htpasswd
        \(acl ? "  acl-config: \(scratch)/acl.yml" : "")
        """)
    }

    static func basic(_ user: String, _ password: String) -> HTTPFields {
        [.authorization: "Basic \(Data("\(user):\(password)".utf8).base64EncodedString())"]
    }

    @Test func basicAuthenticationWithAnHtpasswdFile() async throws {
        let blob = Data("protected".utf8)
        let uri = "/cas/\(Self.sha256(blob))"
        try await withCache(try htpasswdYAML()) { _, client in
            let anonymous = try await client.execute(uri: uri, method: .put, headers: [:], body: Self.body(blob))
            #expect(anonymous.status == .unauthorized)
            #expect(anonymous.headers[.wwwAuthenticate]?.hasPrefix("Basic realm=") == true)
            let wrong = try await client.execute(uri: uri, method: .put, headers: Self.basic("alice", "guess"), body: Self.body(blob))
            #expect(wrong.status == .unauthorized)
            #expect(String(buffer: wrong.body).contains("wrong user or password"))
            #expect(try await client.execute(uri: uri, method: .put, headers: Self.basic("alice", "s3cret"), body: Self.body(blob)).status == .ok)
            // Again: from the verified-credentials cache.
            #expect(try await client.execute(uri: uri, method: .get, headers: Self.basic("alice", "s3cret")).status == .ok)
            #expect(try await client.execute(uri: uri, method: .get, headers: Self.basic("bob", "hunter2")).status == .ok)
        }
    }

    @Test func theACLJudgesHTTPReadsAndWritesAsTheirRPCs() async throws {
        let blob = Data("read-only for bob".utf8)
        let uri = "/cas/\(Self.sha256(blob))"
        try await withCache(try htpasswdYAML(acl: true)) { _, client in
            let refused = try await client.execute(uri: uri, method: .put, headers: Self.basic("bob", "hunter2"), body: Self.body(blob))
            #expect(refused.status == .forbidden)
            #expect(String(buffer: refused.body).contains("may not call Write"))
            #expect(try await client.execute(uri: uri, method: .put, headers: Self.basic("alice", "s3cret"), body: Self.body(blob)).status == .ok)
            #expect(try await client.execute(uri: uri, method: .get, headers: Self.basic("bob", "hunter2")).status == .ok)
            #expect(try await client.execute(uri: uri, method: .head, headers: Self.basic("bob", "hunter2")).status == .ok)
        }
    }

    @Test func htpasswdFilesRefuseWhatTheyCannotCheck() throws {
        #expect(throws: StrataError.self) { try HtpasswdFile(path: "f", contents: "carol:$apr1$abc$def\n") }
        #expect(throws: StrataError.self) { try HtpasswdFile(path: "f", contents: "carol:plain\n") }
        #expect(throws: StrataError.self) { try HtpasswdFile(path: "f", contents: "# nobody\n") }
        #expect(throws: StrataError.self) { try HtpasswdFile(path: "f", contents: "a:{SHA}notbase64!\n") }
    }

    // MARK: Configuration

    @Test func htpasswdIsConfiguredWithItsMethod() throws {
        try "alice:{SHA}\(Data(Insecure.SHA1.hash(data: Data("x".utf8))).base64EncodedString())\n"
            .write(toFile: "\(scratch)/htpasswd", atomically: true, encoding: .utf8)
        func problem(_ authorization: String) -> String? {
            do {
                _ = try Configuration.parse(yaml: Self.yaml(authorization: authorization), file: "strata.yml")
                return nil
            } catch {
                return "\(error)"
            }
        }
        #expect(problem("authorization:\n  method: htpasswd\n  htpasswd: \(scratch)/htpasswd") == nil)
        #expect(problem("authorization:\n  method: htpasswd")?.contains("method htpasswd needs htpasswd") == true)
        #expect(problem("authorization:\n  method: headers\n  htpasswd: \(scratch)/htpasswd")?.contains("applies to method: htpasswd only") == true)
        #expect(problem("authorization:\n  method: htpasswd\n  htpasswd: \(scratch)/absent")?.contains("cannot read the htpasswd file") == true)
    }

    @Test func configCheckReadsAnHTTPChannelsTLSFiles() throws {
        let yaml = Self.yaml(httpOptions: "insecure-mode: false\n    credentials:\n      tls-server-key: \(scratch)/absent.key\n      tls-server-cert: \(scratch)/absent.pem")
        let configuration = try Configuration.parse(yaml: yaml, file: "strata.yml")
        let problems = configuration.checkTLSFiles()
        #expect(problems.count == 1)
        #expect(problems.first.map { "\($0)".contains("absent.pem") } == true, "\(problems)")
    }

    @Test func anHTTPChannelNamesAConfiguredInstance() throws {
        let yaml = Self.yaml().replacingOccurrences(
            of: "  - !http-channel\n    address: 127.0.0.1:0", with: "  - !http-channel\n    address: 127.0.0.1:0\n    instance-name: missing")
        #expect(throws: (any Error).self) { try Configuration.parse(yaml: yaml, file: "strata.yml") }
        do {
            _ = try Configuration.parse(yaml: yaml, file: "strata.yml")
        } catch {
            #expect("\(error)".contains("instance-name \"missing\" is not a configured instance"))
        }
        let unix = Self.yaml().replacingOccurrences(of: "  - !http-channel\n    address: 127.0.0.1:0", with: "  - !http-channel\n    address: unix:/tmp/x.sock")
        #expect(throws: (any Error).self) { try Configuration.parse(yaml: unix, file: "strata.yml") }
    }
}
