import Foundation
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
        - &cas !remote-storage { url: "grpcs://storage:443" }
        """), line: 4, "TLS")
        expectError(config(storage: """
        - &cas !remote-storage { url: "grpc://storage:1", credentials: {} }
        """), line: 4, "credentials\" is not supported by Strata yet")
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
