import Foundation
import StrataConfig
import StrataCore
import StrataSQL
import StrataStorage
import Testing

/// `cleanup:` entries naming an `!sql-index`: accepted for the cleaner, the large-blob expiry and the
/// janitor (an index that lists its entries over a storage that lists its blobs).
@Suite struct SQLCleanupConfigTests {
    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "sqlclean.yml", environment: [:])
    }

    /// Lines 1–17 (`backing` on line 9); a cleanup section follows from line 18.
    func head(backing: String = "!sql-storage {sql: *sql}") -> String {
        """
        server: [!channel {address: "127.0.0.1:1"}]
        connections:
          - !sql-connection &sql
            connection-string: postgresql://bgd@127.0.0.1:5432/bgd?sslmode=disable
        storages:
          - !sql-index &index
            sql: *sql
            max-inline-blob-size: 1k
            storage: \(backing)
          - !lru-storage &plain {size: 1M}
        instances:
          - name: main
            services:
              - !cas
                storage: *index
          - name: other
            services: [!cas {storage: *plain}]

        """
    }

    @Test func sqlIndexWithLargeBlobExpiryIsAcceptedAndListable() throws {
        let configuration = try parse(head() + """
            cleanup:
              - instance-name: main
                index: *index
                high-watermark: 2G
                low-watermark: 1G
                large-blob-threshold: 100M
                large-blob-lifetime: {days: 2}
            """)
        let target = try #require(configuration.cleanups.first)
        let index = try #require(target.index as? SQLIndex)
        #expect(index as AnyObject === configuration.instances[0].cas?.store as AnyObject)
        #expect(index.maxInlineBlobSize == 1024)
        #expect(target.policy.largeBlobThreshold == 100 << 20)
        #expect(target.policy.largeBlobLifetime == .seconds(2 * 86_400))
        #expect(target.policy.onlyIfUnusedFor == CleanupPolicy.defaultProtection)
        // What `strata janitor` checks before it starts.
        let enumerable = try #require(target.index as? any EnumerableIndex)
        #expect(enumerable.backingStore is VerifyingBlobStore<SQLBlobStore>)
        let janitor = try Janitor(index: enumerable, gracePeriod: .seconds(3600))
        #expect(janitor.storage is VerifyingBlobStore<SQLBlobStore>)
        // Inline blobs are not the storage's to hold.
        let small = try Digest(hash: String(repeating: "a", count: 64), sizeBytes: 1024)
        let large = try Digest(hash: String(repeating: "b", count: 64), sizeBytes: 1025)
        #expect(enumerable.storedInBackingStore([small, large]) == [large])
    }

    @Test func janitorRefusesASQLIndexOverAStorageThatCannotList() throws {
        let configuration = try parse(head(backing: "!remote-storage {url: \"grpc://127.0.0.1:1\"}") + """
            cleanup:
              - instance-name: main
                index: *index
                high-blob-count-watermark: 10
                low-blob-count-watermark: 5
            """)
        let target = try #require(configuration.cleanups.first)
        let enumerable = try #require(target.index as? any EnumerableIndex)
        #expect(throws: StrataError.self) { try Janitor(index: enumerable, gracePeriod: .seconds(60)) }
    }

    @Test func aPlainStorageIsStillRefusedNamingBothIndexes() throws {
        do {
            _ = try parse(head() + """
                cleanup:
                  - instance-name: other
                    index: *plain
                    high-watermark: 2G
                    low-watermark: 1G
                """)
            Issue.record("the config was accepted")
        } catch let error as ConfigError {
            #expect(error.file == "sqlclean.yml")
            #expect(error.line == 19, "\(error)")
            #expect(error.description.contains("!redis-index or !sql-index"), "\(error)")
        }
    }
}
