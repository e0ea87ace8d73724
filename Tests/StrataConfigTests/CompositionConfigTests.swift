import Foundation
import StrataActionCache
import StrataConfig
import StrataCore
import StrataRemote
import StrataStorage
import Testing

@Suite struct CompositionConfigTests {
    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "test.yml", environment: [:])
    }

    func expectError(_ yaml: String, line: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "test.yml", line: line, [fragment], sourceLocation: sourceLocation) { try parse(yaml) }
    }

    func config(storage: String) -> String {
        """
        server:
          - !channel { address: "127.0.0.1:50051", insecure-mode: true }
        storages:
        \(storage.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n"))
        instances:
          - name: ""
            services:
              - !cas { storage: *cas }
        """
    }

    @Test func composesAllTiers() throws {
        let configuration = try parse(config(storage: """
        - &small !lru-storage { size: 64M }
        - &sharded !sharded-storage
          shards:
            - { name: a, storage: !lru-storage { size: 16M } }
            - { name: b, storage: !lru-storage { size: 16M }, weight: 2 }
        - &replicated !replicated-storage
          storages: [*small, !lru-storage { size: 8M }]
          read-replication: false
        - &cas !with-cache-storage
          cache: !lru-storage { size: 32M }
          defer-fallback-writes: true
          fallback: !size-differentiated-storage
            size-limited-storages:
              - { max-size: 1M, storage: *replicated }
            fallback: *sharded
        """))
        let store = try #require(configuration.instances.first?.cas?.store as? WithCacheBlobStore)
        let sized = try #require(store.fallback as? SizeDifferentiatedBlobStore)
        #expect(sized.limited.map(\.maxSize) == [1 << 20])
        let replicated = try #require(sized.limited.first?.store as? ReplicatedBlobStore)
        #expect(replicated.readReplication == false)
        let sharded = try #require(sized.fallback as? ShardedBlobStore)
        #expect(sharded.shards.map(\.name) == ["a", "b"])
        #expect(sharded.shards.map(\.weight) == [1, 2])
        // The deferred writes are drained on shutdown by a background service.
        #expect(configuration.backgroundServices.count == 1)
    }

    @Test func remoteStorage() throws {
        let configuration = try parse(config(storage: """
        - &cas !remote-storage { url: "grpc://127.0.0.1:50052", instance-name: main, retries: 5, request-timeout: 30 }
        """))
        let store = try #require((configuration.instances.first?.cas?.store as? VerifyingBlobStore<RemoteBlobStore>)?.backend)
        #expect(store.endpoint == "127.0.0.1:50052")
        #expect(store.channel.options.instanceName == "main")
        #expect(store.channel.options.retries == 5)
        #expect(store.channel.options.requestTimeout == .seconds(30))
        #expect(configuration.backgroundServices.count == 1)
    }

    /// BuildGrid's client `credentials` and `channel-options` on `!remote-storage` and
    /// `!remote-action-cache`, mapped onto the one client layer; what changes nothing is named in a warning.
    @Test func remoteCredentialsAndChannelOptions() throws {
        let folder = NSTemporaryDirectory() + "strata-remote-config-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "token\n".write(toFile: folder + "/token", atomically: true, encoding: .utf8)
        let configuration = try parse("""
        server:
          - !channel { address: "127.0.0.1:50051", insecure-mode: true }
        storages:
          - &cas !remote-storage
            url: https://storage:50052/
            credentials: { auth-token: \(folder)/token, token-refresh-seconds: 600, tls-server-key: /x/server.key }
            channel-options: { lb-policy-name: round_robin, keepalive-time-ms: 30000, max-receive-message-length: -1 }
        instances:
          - name: ""
            services:
              - !cas { storage: *cas }
              - !action-cache
                cache: !remote-action-cache
                  url: http://cache:50053
                  credentials: { tls-server-cert: /etc/hostname, auth-token: \(folder)/token }
        """)
        let store = try #require((configuration.instances.first?.cas?.store as? VerifyingBlobStore<RemoteBlobStore>)?.backend)
        #expect(store.channel.endpoint == RemoteEndpoint(address: .host("storage", port: 50052), schemeRequiresTLS: true))
        #expect(store.channel.options.credentials == RemoteCredentials(tokenFile: folder + "/token"))
        #expect(store.channel.options.keepaliveTime == .seconds(30))
        #expect(store.channel.options.maxReceiveMessageBytes == Int.max)
        let checked = try #require(configuration.instances.first?.actionCache as? CompletenessCheckingActionCache)
        let cache = try #require(checked.base as? RemoteActionCache)
        // TLS files on a plaintext URL are unused, as BuildGrid leaves them; the token is sent.
        #expect(cache.channel.options.credentials == RemoteCredentials(tokenFile: folder + "/token"))
        let warnings = configuration.warnings.joined(separator: "\n")
        for fragment in ["token-refresh-seconds is ignored", "tls-server-key is a server's key", "lb-policy-name is ignored",
                         "TLS files are ignored: http://cache:50053 is plaintext"] {
            #expect(warnings.contains(fragment), "\(fragment) in \(warnings)")
        }
    }

    @Test func errorsNameTheLineAndKey() {
        expectError(config(storage: """
        - &cas !sharded-storage
          shards:
            - { name: a, storage: !lru-storage { size: 1M } }
            - { name: a, storage: !lru-storage { size: 1M } }
        """), line: 7, "shard name \"a\" is used twice")
        expectError(config(storage: """
        - &cas !replicated-storage
          storages: [!lru-storage { size: 1M }]
        """), line: 5, "at least two storages")
        expectError(config(storage: """
        - &cas !size-differentiated-storage
          size-limited-storages: [{ max-size: 1M, storage: !lru-storage { size: 1M } }]
        """), line: 4, "needs a fallback")
        expectError(config(storage: """
        - &cas !remote-storage { url: "ftp://storage:443" }
        """), line: 4, "unknown scheme")
        expectError(config(storage: """
        - &cas !remote-storage { url: "grpcs://storage:1", credentials: { tls-client-cert: /etc/hostname } }
        """), line: 4, "needs its private key")
        expectError(config(storage: """
        - &cas !remote-storage { url: "grpcs://storage:1", credentials: { tls-server-cert: /nonexistent-strata-test/ca.pem } }
        """), line: 4, "/nonexistent-strata-test/ca.pem cannot be read")
        expectError(config(storage: """
        - &cas !remote-storage { url: "grpcs://storage:1", credentials: { tls-client-keys: x } }
        """), line: 4, "unknown option \"tls-client-keys\"")
        expectError(config(storage: """
        - &cas !with-cache-storage { cache: !lru-storage { size: 1M } }
        """), line: 4, "needs a fallback")
    }
}

@Suite struct ExpandVarsScalarTests {
    @Test func numbersAndBooleansFromTheEnvironment() throws {
        let yaml = """
            server:
              - !channel { address: "127.0.0.1:50051", insecure-mode: !expand-vars "$INSECURE" }
            caches:
              - &ac !lru-action-cache { max-cached-refs: !expand-vars "${REFS}", allow-updates: !expand-vars "$UPDATES" }
            instances:
              - name: ""
                services:
                  - !action-cache { cache: *ac }
            """
        let configuration = try Configuration.parse(
            yaml: yaml, file: "test.yml", environment: ["REFS": "123", "UPDATES": "false", "INSECURE": "true"])
        #expect(configuration.instances.first?.actionCache?.allowsUpdates == false)
        do {
            _ = try Configuration.parse(yaml: yaml, file: "test.yml", environment: ["REFS": "many", "UPDATES": "false", "INSECURE": "true"])
            Issue.record("a non-number was accepted")
        } catch let error as ConfigError {
            #expect(error.line == 4)
            #expect(error.description.contains("expected an integer"))
        }
    }
}
