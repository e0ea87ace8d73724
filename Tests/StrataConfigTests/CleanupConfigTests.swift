import Foundation
import StrataConfig
import StrataCore
import StrataRedis
import StrataStorage
import Testing

@Suite struct CleanupConfigTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-cleanup-config-\(UUID().uuidString)").path

    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "cleanup.yml", environment: ["DISK": root])
    }

    func expectError(_ yaml: String, line: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "cleanup.yml", line: line, [fragment], sourceLocation: sourceLocation) { try parse(yaml) }
    }

    /// Lines 1–9; a cleanup section follows from line 10.
    var head: String {
        """
        server: [!channel {address: "127.0.0.1:1"}]
        storages:
          - !redis-index &index
            storage: !disk-storage {path: /nonexistent/strata-cleanup-config}
            redis: !redis-connection {host: redis.internal}
          - !lru-storage &plain {size: 1M}
        instances:
          - name: main
            services: [!cas {storage: *index}]

        """
    }

    @Test func everyOption() throws {
        let configuration = try parse(head + """
            cleanup:
              - instance-name: main
                index: *index
                batch-size: 10M
                high-watermark: 2G
                low-watermark: 1G
                high-blob-count-watermark: 1000000
                low-blob-count-watermark: 0
                only-if-unused-for: {days: 1, hours: 2, minutes: 3, seconds: 4.5}
                large-blob-threshold: 100M
                large-blob-lifetime: {weeks: 1}
                retry-limit: 3
                sleep-interval: 30
            """)
        #expect(configuration.cleanups.count == 1)
        let target = try #require(configuration.cleanups.first)
        #expect(target.instanceName == "main")
        #expect(target.index is RedisIndex)
        // The alias names the instance's own index object.
        #expect(target.index as AnyObject === configuration.instances[0].cas?.store as AnyObject)
        let policy = target.policy
        #expect(policy.batchSize == 10 << 20)
        #expect(policy.bytes == .init(high: 2 << 30, low: 1 << 30))
        #expect(policy.blobCount == .init(high: 1_000_000, low: 0))
        let expected: Duration = .milliseconds(93_784_500)
        #expect(policy.onlyIfUnusedFor == expected)
        #expect(policy.largeBlobThreshold == 100 << 20)
        #expect(policy.largeBlobLifetime == .seconds(604_800))
        #expect(policy.retryLimit == 3)
        #expect(target.sleepInterval == .seconds(30))
    }

    @Test func defaults() throws {
        let configuration = try parse(head + """
            cleanup:
              - {instance-name: main, index: *index, high-watermark: 1000, low-watermark: 0}
            """)
        let target = try #require(configuration.cleanups.first)
        #expect(target.policy.onlyIfUnusedFor == .seconds(3 * 3600))
        #expect(target.policy.retryLimit == 10)
        #expect(target.policy.batchSize == 100 << 20)
        #expect(target.policy.blobCount == nil)
        #expect(target.policy.largeBlobThreshold == nil)
        #expect(target.sleepInterval == nil)
        // A config without the section has no cleanups, and serve accepts one with it (parsed above).
        #expect(try parse(head).cleanups.isEmpty)
    }

    @Test func badEntriesAreRefusedWithTheirLine() {
        func entry(_ lines: String) -> String { head + "cleanup:\n  - instance-name: main\n    index: *index\n" + lines }
        expectError(entry("    high-watermark: 10\n"), line: 13, "high-watermark needs low-watermark")
        expectError(entry("    low-watermark: 10\n"), line: 13, "low-watermark needs high-watermark")
        expectError(entry("    high-watermark: 10\n    low-watermark: 20\n"), line: 14, "cleanup[0].low-watermark: low-watermark (20) is above")
        expectError(entry(""), line: 11, "needs high-watermark and low-watermark")
        expectError(entry("    high-watermark: 10\n    low-watermark: 5\n    only-if-unused-for: {fortnights: 1}\n"), line: 15,
                    "unknown option \"fortnights\"")
        expectError(entry("    high-watermark: 10\n    low-watermark: 5\n    only-if-unused-for: {hours: soon}\n"), line: 15,
                    "expected a number of hours")
        expectError(entry("    high-watermark: 10\n    low-watermark: 5\n    only-if-unused-for: {weeks: 1e300}\n"), line: 15,
                    "a time period must be at most 100 years")
        expectError(entry("    high-watermark: 10\n    low-watermark: 5\n    sleep-interval: 1e300\n"), line: 15,
                    "must be at most 3153600000 seconds")
        expectError(entry("    high-watermark: 10\n    low-watermark: 5\n    large-blob-threshold: 1M\n"), line: 15,
                    "large-blob-threshold needs large-blob-lifetime")
        expectError(entry("    high-watermark: 10\n    low-watermark: 5\n    retry-limit: -1\n"), line: 15, "must be at least 0")
        expectError(entry("    high-watermark: 10\n    low-watermark: 5\n    window: 3\n"), line: 15, "unknown option \"window\"")
        expectError(head + "cleanup:\n  - {instance-name: other, index: *index, high-watermark: 10, low-watermark: 5}\n", line: 11,
                    "no instance is named \"other\"")
        expectError(head + "cleanup:\n  - {instance-name: main, index: *plain, high-watermark: 10, low-watermark: 5}\n", line: 11,
                    "index must be an index storage")
        expectError(head + "cleanup:\n  - {instance-name: main, high-watermark: 10, low-watermark: 5}\n", line: 11,
                    "needs index")
        // A protection window no longer than the index's refresh interval could delete a blob reported present.
        let refreshing = head.replacingOccurrences(of: "redis: !redis-connection {host: redis.internal}",
                                                   with: "redis: !redis-connection {host: redis.internal}\n    refresh-accesstime-older-than: 3600")
        expectError(refreshing + "cleanup:\n  - instance-name: main\n    index: *index\n    high-watermark: 10\n    low-watermark: 5\n"
                        + "    only-if-unused-for: {minutes: 30}\n", line: 16, "must be longer than the index's refresh-accesstime-older-than (3600.0 s)")
    }

    @Test func diskStorageBudget() throws {
        let configuration = try parse("""
            server: [!channel {address: "127.0.0.1:1"}]
            instances:
              - name: ""
                services:
                  - !cas {storage: !disk-storage {path: !expand-path "${DISK}/a", max-size: 1M, evict: lru}}
                  - !bytestream {storage: !disk-storage {path: !expand-path "${DISK}/b", max-size: 2048}}
            """)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cas = try #require((configuration.instances[0].cas?.store as? VerifyingBlobStore<DiskBlobStore>)?.backend)
        #expect(cas.budget == .init(maxBytes: 1 << 20, evictLeastRecentlyUsed: true))
        let byteStream = try #require((configuration.instances[0].byteStream?.store as? VerifyingBlobStore<DiskBlobStore>)?.backend)
        #expect(byteStream.budget == .init(maxBytes: 2048, evictLeastRecentlyUsed: false))
        #expect(configuration.storageSummary.contains { $0.contains("max-size 2048 bytes, refusing writes") })

        let bad = """
            server: [!channel {address: "127.0.0.1:1"}]
            instances:
              - name: ""
                services:
                  - !cas
                    storage: !disk-storage
                      path: /tmp/strata-never-created

            """
        expectError(bad + "          evict: lru\n", line: 8, "evict: lru needs a max-size")
        expectError(bad + "          max-size: 1M\n          evict: fifo\n", line: 9, "unknown eviction \"fifo\"")
        expectError(bad + "          max-size: none\n", line: 8, "is not a size")
    }
}
