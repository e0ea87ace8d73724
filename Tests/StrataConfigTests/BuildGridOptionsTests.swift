import Foundation
import StrataChunking
import StrataConfig
import StrataServer
import Testing

/// BuildGrid options real configurations carry: accepted, with a warning on their line where they
/// change nothing in Strata; and every problem of a file reported at once, without follow-on errors.
@Suite struct BuildGridOptionsTests {
    let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "bg.yml", environment: ["HOME": "/nonexistent/strata-bg"])
    }

    /// The problems `yaml` is refused with, as "LINE: PATH: WHAT" (one or several).
    func problems(_ yaml: String, sourceLocation: SourceLocation = #_sourceLocation) -> [ConfigError] {
        do {
            _ = try parse(yaml)
            Issue.record("the config was accepted", sourceLocation: sourceLocation)
        } catch let error as ConfigError {
            return [error]
        } catch let errors as ConfigErrors {
            return errors.errors
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
        return []
    }

    let minimal = """
        server: [!channel {address: "127.0.0.1:50051"}]
        storages: [!lru-storage &cas {size: 1M}]
        instances: [{name: "", services: [!cas {storage: *cas}]}]

        """

    @Test func everyAcceptedOptionWarnsOnItsLineSayingWhy() throws {
        let configuration = try Configuration.load(
            file: "\(root)/Tests/e2e/buildgrid-options.yml", environment: ["HOME": "/nonexistent/strata-bg"])
        let file = "\(root)/Tests/e2e/buildgrid-options.yml"
        // Line and key of each warning, in the order they are given; each says why.
        let expected: [(line: Int, key: String, why: String)] = [
            (14, "thread-pool-size", "Strata sizes its own thread pools"),
            (12, "server-reflection", "does not serve gRPC server reflection"),
            (13, "grpc-compression", "uncompressed"),
            (25, "grpc-server-options.grpc.max_receive_message_length", "requests are at most 5242880 bytes"),
            (26, "grpc-server-options.grpc.max_send_message_length", "responses are at most 5242880 bytes"),
            (28, "grpc-server-options.grpc.enable_retries", "no equivalent"),
            (43, "metering", "throttles remote execution"),
            (35, "connections[0].pool-recycle", "closes one idle for 60 s"),
            (54, "storages[0].replication-queue-size", "always repairs"),
            (71, "instances[0].services[1].tree-cache-size", "no cache of GetTree responses"),
            (72, "instances[0].services[1].tree-cache-ttl-minutes", "no cache of GetTree responses"),
            (74, "instances[0].services[1].chunked-by-buildbox-allowed-subjects", "SpliceBlob"),
            (78, "instances[0].services[2].disable-overwrite-early-return", "completes at once"),
        ]
        let warnings = configuration.warnings
        #expect(warnings.count == expected.count, "\(warnings.joined(separator: "\n"))")
        // In file order, as problems are.
        let lines = warnings.compactMap { Int($0.dropFirst(file.count + 1).prefix { $0 != ":" }) }
        #expect(lines == expected.map(\.line).sorted(), "\(warnings.joined(separator: "\n"))")
        for (line, key, why) in expected {
            let prefix = "\(file):\(line): \(key) is ignored: "
            #expect(warnings.contains { $0.hasPrefix(prefix) && $0.contains(why) }, "no \(prefix)…\(why) in\n\(warnings.joined(separator: "\n"))")
        }
        // The grpc-server-options with an equivalent set every channel's connection options.
        let policy = try #require(configuration.connectionPolicies.values.first)
        #expect(policy.maxAge == .seconds(300) && policy.maxAgeGrace == .seconds(30))
        #expect(policy.idleTimeout == .seconds(600))
        #expect(policy.keepaliveTime == .seconds(60) && policy.keepaliveTimeout == .seconds(10))
        #expect(policy.clientPingsWithoutCalls == true && policy.clientPingMinimumInterval == .seconds(30))
        #expect(policy.maxConcurrentStreams == 200)
        // A larger message limit than Strata needs keeps its batch limit.
        #expect(configuration.maxBatchTotalSizeBytes == 4 << 20)
        #expect(configuration.instances.map(\.name) == ["main"])
    }

    @Test func buildGridsDefaultsAreAcceptedSilently() throws {
        let configuration = try parse("""
            description: "cache"
            server-reflection: false
            grpc-compression: NoCompression
            grpc-server-options: {grpc.so_reuseport: 0}
            server: [!channel {address: "127.0.0.1:50051", insecure-mode: true}]
            connections:
              - !sql-connection {connection-string: "postgresql://bgd@db/bgd", pool-recycle: -1}
            storages: [!lru-storage &cas {size: 1M}]
            instances:
              - name: ""
                description: the default instance
                services:
                  - !cas {storage: *cas, enable-chunking: false}
                  - !bytestream {storage: *cas, disable-overwrite-early-return: false, stream-blob: true}
            """)
        #expect(configuration.warnings.isEmpty, "\(configuration.warnings)")
        #expect(configuration.connectionPolicies.values.first == ConnectionPolicy.default)
    }

    @Test func valuesThatDifferFromStrataWarn() throws {
        let configuration = try parse("""
            server: [!channel {address: "127.0.0.1:50051"}]
            grpc-server-options: {grpc.so_reuseport: 1}
            grpc-compression: Deflate
            storages: [!lru-storage &cas {size: 1M}]
            instances: [{name: "", services: [!bytestream {storage: *cas, stream-blob: false}]}]
            """)
        #expect(configuration.warnings.sorted() == [
            "bg.yml:2: grpc-server-options.grpc.so_reuseport is ignored: Strata never lets another server share its port",
            "bg.yml:3: grpc-compression is ignored: Strata sends its responses uncompressed (clients accept that whatever they asked for)",
            "bg.yml:5: instances[0].services[0].stream-blob is ignored: Strata always streams a blob from its storage",
        ])
    }

    @Test func valuesBuildGridWouldRefuseAreRefused() {
        let cases: [(yaml: String, line: Int, fragment: String)] = [
            ("grpc-compression: Brotli\n", 4, "unknown grpc-compression \"Brotli\"; BuildGrid's values are NoCompression, Deflate and Gzip"),
            ("server-reflection: maybe\n", 4, "server-reflection: expected true or false"),
            ("grpc-server-options: {grpc.keepalive_time_ms: soon}\n", 4, "grpc-server-options.grpc.keepalive_time_ms: expected an integer"),
            ("grpc-server-options: {grpc.keepalive_permit_without_calls: 2}\n", 4, "expected 0 or 1"),
            ("grpc-server-options: {grpc.max_receive_message_length: 1048576}\n", 4, "must be at least 2097152 bytes"),
            ("metering: {redis: x}\n", 4, "metering: expected !metering, found an untagged value"),
            ("description: [a, b]\n", 4, "description: expected a string"),
        ]
        for (yaml, line, fragment) in cases {
            let found = problems(minimal + yaml)
            #expect(found.count == 1 && found.first?.line == line && found.first?.description.contains(fragment) == true, "\(found)")
        }
    }

    @Test func enableChunkingTurnsOnSplitAndSpliceWithTheSpecsParameters() throws {
        func chunker(_ options: String) throws -> FastCDC2020? {
            let configuration = try parse("""
                server: [!channel {address: "127.0.0.1:50051"}]
                storages: [!lru-storage &cas {size: 1M}]
                instances: [{name: "", services: [!cas {storage: *cas\(options)}]}]
                """)
            #expect(configuration.warnings.isEmpty, "\(configuration.warnings)")
            return configuration.instances[0][Instance.BlobChunking.self]
        }
        #expect(try chunker("") == nil)
        #expect(try chunker(", enable-chunking: false") == nil)
        let recommended = try #require(try chunker(", enable-chunking: true")).parameters
        #expect(recommended.averageSize == 512 << 10 && recommended.minimumSize == 128 << 10 && recommended.maximumSize == 2 << 20)
        #expect(recommended.seed == 0)
        let configured = try #require(try chunker(", enable-chunking: true, average-chunk-size: 64K")).parameters
        #expect(configured.averageSize == 64 << 10 && configured.minimumSize == 16 << 10 && configured.maximumSize == 256 << 10)
    }

    @Test func averageChunkSizeIsCheckedAgainstTheSpec() {
        let cases: [(String, String)] = [
            ("enable-chunking: true, average-chunk-size: 512", "outside 1024...1048576 bytes"),
            ("enable-chunking: true, average-chunk-size: 2M", "outside 1024...1048576 bytes"),
            ("enable-chunking: true, average-chunk-size: 3000", "not a power of two"),
            ("enable-chunking: true, average-chunk-size: lots", "is not a size"),
            ("average-chunk-size: 64K", "set enable-chunking: true"),
        ]
        for (options, fragment) in cases {
            let found = problems("""
                server: [!channel {address: "127.0.0.1:50051"}]
                storages: [!lru-storage &cas {size: 1M}]
                instances:
                  - name: ""
                    services:
                      - !cas {storage: *cas, \(options)}
                """)
            #expect(found.count == 1 && found.first?.line == 6 && found.first?.description.contains("average-chunk-size") == true
                && found.first?.description.contains(fragment) == true, "\(found)")
        }
    }

    @Test func aSmallerMessageLimitLowersTheBatchLimit() throws {
        let configuration = try parse(minimal + "grpc-server-options: {grpc.max_receive_message_length: 3145728}\n")
        #expect(configuration.maxBatchTotalSizeBytes == 2 << 20)
        #expect(configuration.registry.maxBatchTotalSizeBytes == 2 << 20)
        #expect(configuration.warnings.isEmpty, "\(configuration.warnings)")
    }

    @Test func aChannelsOwnOptionOverridesTheServerWideOne() throws {
        let configuration = try parse("""
            grpc-server-options: {grpc.max_connection_idle_ms: 600000, grpc.max_connection_age_ms: 60000}
            server:
              - !channel {address: "127.0.0.1:50051", idle-timeout: 30}
              - !channel {address: "127.0.0.1:50052"}
            storages: [!lru-storage &cas {size: 1M}]
            instances: [{name: "", services: [!cas {storage: *cas}]}]
            """)
        let policies = configuration.addresses.map { configuration.connectionPolicies[$0] }
        #expect(policies.map { $0?.idleTimeout } == [.seconds(30), .seconds(600)])
        #expect(policies.map { $0?.maxAge } == [.seconds(60), .seconds(60)])
    }

    @Test func threeIndependentProblemsAreAllReportedInFileOrder() {
        let found = problems("""
            server:
              - !channel {address: "nowhere"}
            storages:
              - !lru-storage &cas {size: lots}
              - !disk-storage &disk {path: /tmp/strata-bg, evict: sometimes}
            instances:
              - name: ""
                services:
                  - !cas {storage: *disk, read-only: perhaps}
            """)
        #expect(found.map(\.description) == [
            "bg.yml:2: server[0].address: address \"nowhere\" is not host:port, [ipv6]:port or unix:/path",
            "bg.yml:4: storages[0].size: \"lots\" is not a size: use bytes or a number with K, M, G or T (binary), e.g. 2048M",
            "bg.yml:5: storages[1].evict: unknown eviction \"sometimes\": use lru (evict least recently used blobs) or none (refuse writes past max-size)",
        ])
        // The instance naming the failed storage says nothing more: its read-only value is not reached.
    }

    @Test func everyUnknownTopLevelKeyIsReported() {
        let found = problems(minimal + "rate-limiter: {concurrent-request-limit: 10}\nsentry: {}\nsevrer: []\n")
        #expect(found.map(\.line) == [4, 5, 6], "\(found)")
        #expect(found.last?.description.contains("(did you mean \"server\"?)") == true, "\(found)")
    }

    @Test func anItemUsingOneThatFailedSaysNothingMore() {
        // A connection, a storage and an instance fail; the storage, cache, services and cleanup entry
        // that use them (through aliases) add nothing.
        let found = problems("""
            server: [!channel {address: "127.0.0.1:50051"}]
            connections:
              - !redis-connection &redis {port: 6379}
            storages:
              - !disk-storage &disk {path: /tmp/strata-bg-cascade, max-size: lots}
              - !redis-index &index {storage: *disk, redis: *redis}
            caches:
              - !lru-action-cache &ac {storage: *index, max-cached-refs: 10}
            instances:
              - name: main
                services:
                  - !cas {storage: *index}
                  - !bytestream {storage: *disk}
                  - !action-cache {cache: *ac}
              - name: [!unknown x]
                services: []
            cleanup:
              - instance-name: main
                index: *index
                high-watermark: 1G
                low-watermark: 512M
              - instance-name: other
                index: *index
                high-watermark: 1G
                low-watermark: 512M
            """)
        #expect(found.map(\.description) == [
            "bg.yml:3: connections[0]: !redis-connection needs a host (and a port, 6379 by default)",
            "bg.yml:5: storages[0].max-size: \"lots\" is not a size: use bytes or a number with K, M, G or T (binary), e.g. 2048M",
            "bg.yml:15: instances[1].name[0]: tag !unknown does not apply to a string",
        ])
    }

    @Test func executionPartsStrataDoesNotHaveAreTheRefusalsNamed() {
        let found = problems(minimal + """
            schedulers:
              - !memory-scheduler &scheduler {storage: *cas}
            services:
              - !quota-service {scheduler: *scheduler}
            """)
        #expect(found.map(\.description) == [
            "bg.yml:7: services[0]: !quota-service is not supported by Strata yet: Strata has no per-identity execution quotas",
        ])
        let execution = problems("""
            server: [!channel {address: "127.0.0.1:50051"}]
            storages: [!lru-storage &cas {size: 1M}]
            instances:
              - name: ""
                services:
                  - !execution {scheduler: *cas}
                  - !cas {storage: *cas, tree-cache-size: lots}
            """)
        #expect(execution.map(\.line) == [2, 7], "\(execution)")
        #expect(execution.first?.description.contains("unknown tag !lru-storage; supported scheduler tags: !memory-scheduler, !sql-scheduler") == true, "\(execution)")
    }
}
