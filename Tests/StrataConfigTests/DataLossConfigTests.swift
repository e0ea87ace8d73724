import Foundation
import StrataConfig
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

/// Loading a configuration has no side effects, and configurations that lose acknowledged blobs are
/// refused at load time with the file, the line and why.
@Suite struct DataLossConfigTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-loss-\(UUID().uuidString)").path

    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "loss.yml", environment: ["DISK": scratch])
    }

    func expectError(_ yaml: String, line: Int, _ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "loss.yml", line: line, fragments, sourceLocation: sourceLocation) { try parse(yaml) }
    }

    /// Lines 1-4; storages follow from line 5.
    let head = """
        server: [!channel {address: "127.0.0.1:1"}]
        connections:
          - !redis-connection &redis {host: redis.internal}
        storages:

        """

    @Test func loadingCreatesNothing() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configuration = try parse(head + """
              - !disk-storage &disk {path: !expand-path "${DISK}/cas"}
              - !redis-index &index {redis: *redis, storage: *disk}
            instances:
              - name: ""
                services:
                  - !cas {storage: *index}
                  - !bytestream {storage: *index}
                  - !action-cache {cache: !lru-action-cache {max-cached-refs: 10, storage: !disk-storage {path: !expand-path "${DISK}/evicting", max-size: 1M, evict: lru}}}
            """)
        #expect(!FileManager.default.fileExists(atPath: scratch), "`strata config check` created the storage folders")
        #expect(configuration.preparations.count == 2)
    }

    /// What loading no longer checks, `strata serve` reports before it listens, at the storage's line.
    @Test func preparingNamesTheStoragesLine() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: "\(scratch)/file", contents: Data())
        let configuration = try parse(head + """
              - !disk-storage &disk {path: !expand-path "${DISK}/file/cas"}
            instances:
              - name: ""
                services: [!cas {storage: *disk}]
            """)
        do {
            try await configuration.prepare()
            Issue.record("a disk storage under a regular file was prepared")
        } catch let error as ConfigError {
            #expect(error.file == "loss.yml" && error.line == 5 && error.path == "storages[0]", "\(error)")
            #expect(error.message.contains("cannot prepare disk storage at \(scratch)/file/cas"), "\(error)")
        }
    }

    /// `strata config check`, `cleanup`, `janitor` and `migrate` load the file a live server runs: an
    /// upload in flight on that server must survive it (loading used to empty the folder's tmp/).
    @Test func loadingTheServersFileDuringAnUploadLeavesTheUploadAlone() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let serving = DiskBlobStore(path: "\(scratch)/cas", sync: false)
        try await serving.prepare()
        let upload = HeldUpload(Blob.random(size: 3 << 20))
        async let write: Void = serving.write(upload.blob.digest, body: upload.body)
        await upload.waitUntilHalfway()
        let file = "\(scratch)/strata.yml"
        try (head + """
              - !disk-storage &disk {path: !expand-path "${DISK}/cas"}
            instances:
              - name: ""
                services: [!cas {storage: *disk}, !bytestream {storage: *disk}]
            """).write(toFile: file, atomically: true, encoding: .utf8)
        _ = try Configuration.load(file: file, environment: ["DISK": scratch])
        upload.release()
        try await write
        #expect(try await serving.readAll(upload.blob.digest) == upload.blob.data)
    }

    @Test func anIndexOverAStorageThatEvictsIsRefused() {
        expectError(head + """
              - !redis-index &index
                redis: *redis
                storage: !lru-storage {size: 1M}
            instances:
              - name: ""
                services: [!cas {storage: *index}]
            """, line: 5, ["storages[0]: !redis-index over a storage that deletes blobs by itself (!lru-storage at loss.yml:7)",
                           "would keep reporting evicted blobs present"])
        // Also below a composition, and for !sql-index.
        expectError("""
            server: [!channel {address: "127.0.0.1:1"}]
            connections:
              - !sql-connection &sql {connection-string: "postgresql://bgd@127.0.0.1:5432/bgd"}
            storages:
              - !sql-index &index
                sql: *sql
                storage: !sharded-storage
                  shards:
                    - {name: a, storage: !disk-storage {path: /nonexistent/a}}
                    - {name: b, storage: !disk-storage {path: /nonexistent/b, max-size: 1G, evict: lru}}
            instances:
              - name: ""
                services: [!cas {storage: *index}]
            """, line: 5, ["!sql-index over a storage that deletes blobs by itself (!disk-storage at loss.yml:10)"])
    }

    @Test func anIndexOverACacheInFrontOfAStorageThatKeepsItsBlobsIsAccepted() throws {
        let configuration = try parse(head + """
              - !redis-index &index
                redis: *redis
                storage: !with-cache-storage
                  cache: !lru-storage {size: 1M}
                  fallback: !disk-storage {path: /nonexistent/fallback}
              - !disk-storage &budgeted {path: /nonexistent/budgeted, max-size: 1G}
              - !redis-index &refusing {redis: *redis, prefix: "b:", storage: *budgeted}
            instances:
              - name: ""
                services: [!cas {storage: *index}]
              - name: b
                services: [!cas {storage: *refusing}]
            """)
        #expect(configuration.instances.count == 2)
    }

    /// Measured before: `strata janitor --once` with this configuration deleted 200 of 200 acknowledged blobs.
    @Test func twoIndexesOverOneStorageAreRefused() {
        expectError(head + """
              - !disk-storage &disk {path: /nonexistent/shared}
              - !sharded-storage &cas
                shards:
                  - name: a
                    storage: !redis-index {redis: *redis, prefix: "a:", storage: *disk}
                  - name: b
                    storage: !redis-index {redis: *redis, prefix: "b:", storage: *disk}
            instances:
              - name: ""
                services: [!cas {storage: *cas}, !bytestream {storage: *cas}]
            """, line: 11, ["!redis-index and the !redis-index at loss.yml:9 both index !disk-storage at loss.yml:5",
                            "the janitor of each deletes the blobs the other recorded"])
        // Two nodes naming one folder are one storage.
        expectError(head + """
              - !redis-index &a {redis: *redis, prefix: "a:", storage: !disk-storage {path: /nonexistent/shared}}
              - !redis-index &b {redis: *redis, prefix: "b:", storage: !disk-storage {path: /nonexistent/shared/}}
            instances:
              - name: a
                services: [!cas {storage: *a}]
              - name: b
                services: [!cas {storage: *b}]
            """, line: 6, ["both index !disk-storage at loss.yml:5"])
    }

    @Test func aServiceWritingPastTheIndexIsRefused() {
        expectError(head + """
              - !disk-storage &disk {path: /nonexistent/cas}
              - !redis-index &index {redis: *redis, storage: *disk}
            instances:
              - name: ""
                services:
                  - !cas {storage: *index}
                  - !bytestream {storage: *disk}
            """, line: 11, ["instances[0].services[1]: !bytestream of instance \"\" writes to !disk-storage at loss.yml:5 directly, not through the !redis-index at loss.yml:6",
                            "the janitor deletes blobs that index does not know as orphans"])
        // The same storage written directly by another instance, or through a composition.
        expectError(head + """
              - !disk-storage &disk {path: /nonexistent/cas}
              - !redis-index &index {redis: *redis, storage: *disk}
            instances:
              - name: indexed
                services: [!cas {storage: *index}]
              - name: other
                services:
                  - !cas
                    storage: !with-cache-storage {cache: !lru-storage {size: 1M}, fallback: *disk}
            """, line: 12, ["!cas of instance \"other\" writes to !disk-storage at loss.yml:5 directly"])
        // An action cache keeping its ActionResults in the storage, past the index.
        expectError(head + """
              - !disk-storage &disk {path: /nonexistent/cas}
              - !redis-index &index {redis: *redis, storage: *disk}
            instances:
              - name: ""
                services:
                  - !cas {storage: *index}
                  - !action-cache {cache: !redis-action-cache {redis: *redis, storage: *disk}}
            """, line: 11, ["!redis-action-cache writes to !disk-storage at loss.yml:5 directly"])
    }

    @Test func readingPastTheIndexIsAccepted() throws {
        let configuration = try parse(head + """
              - !disk-storage &disk {path: /nonexistent/cas}
              - !redis-index &index {redis: *redis, storage: *disk}
            instances:
              - name: ""
                services:
                  - !cas {storage: *index}
                  - !bytestream {storage: *disk, read-only: true}
            """)
        #expect(configuration.instances.count == 1)
    }

    /// The shipped tiered example shares one `!sql-storage` between two indexes below size routing: no
    /// janitor lists it (the indexes' storages cannot list), and sharding gives each blob one index.
    @Test func theTieredExampleIsAccepted() throws {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let configuration = try Configuration.load(file: url.appendingPathComponent("config/tiered.yml").path, environment: [
            "STRATA_ADDRESS": "127.0.0.1:1", "STRATA_REDIS_HOST": "redis.internal", "STRATA_REDIS_PORT": "6379",
            "STRATA_POSTGRES_URL": "postgresql://bgd@127.0.0.1:5432/bgd", "STRATA_S3_ENDPOINT": "http://127.0.0.1:1",
            "STRATA_S3_BUCKET": "bucket", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
        ])
        #expect(configuration.instances.count == 1)
    }
}
