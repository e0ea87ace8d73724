import Foundation
import StrataConfig
import StrataCore
import StrataS3
import StrataSQL
import StrataStorage
import Testing

/// `compression:` of `!disk-storage`, `!s3-storage` and `!sql-storage`: off by default, zstd with an
/// optional level, refused where a storage cannot do it (`!lru-storage`).
@Suite struct DiskCompressionConfigTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-compression-config-\(UUID().uuidString)").path

    func parse(_ storage: String) throws -> Configuration {
        try Configuration.parse(yaml: """
            server: [!channel {address: "127.0.0.1:1", insecure-mode: true}]
            storages:
              - &cas \(storage)
            instances:
              - name: ""
                services: [!cas {storage: *cas}]
            """, file: "test.yml", environment: ["DATA": scratch])
    }

    func disk(_ configuration: Configuration) -> DiskBlobStore? {
        (configuration.instances[0].cas?.store as? VerifyingBlobStore<DiskBlobStore>)?.backend
    }

    @Test func offByDefaultZstdWithALevelWhenAsked() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        #expect(disk(try parse("!disk-storage {path: !expand-path \"${DATA}/a\"}"))?.compressionLevel == nil)
        #expect(disk(try parse("!disk-storage {path: !expand-path \"${DATA}/a\", compression: none}"))?.compressionLevel == nil)
        #expect(disk(try parse("!disk-storage {path: !expand-path \"${DATA}/a\", compression: zstd}"))?.compressionLevel == 3)
        #expect(disk(try parse("!disk-storage {path: !expand-path \"${DATA}/a\", compression: zstd, compression-level: 9}"))?.compressionLevel == 9)
        // Loading touches nothing on disk.
        #expect(!FileManager.default.fileExists(atPath: scratch))
    }

    @Test func s3StoresCompressedWhenAsked() throws {
        func s3(_ configuration: Configuration) -> S3BlobStore? {
            (configuration.instances[0].cas?.store as? VerifyingBlobStore<S3BlobStore>)?.backend
        }
        #expect(s3(try parse("!s3-storage {bucket: cas, access-key: a, secret-key: b}"))?.options.compressionLevel == nil)
        #expect(s3(try parse("!s3-storage {bucket: cas, access-key: a, secret-key: b, compression: zstd}"))?.options.compressionLevel == 3)
        #expect(s3(try parse("!s3-storage {bucket: cas, access-key: a, secret-key: b, compression: zstd, compression-level: -1}"))?.options.compressionLevel == -1)
    }

    @Test func sqlStoresCompressedWhenAsked() throws {
        func sql(_ configuration: Configuration) -> SQLBlobStore? {
            (configuration.instances[0].cas?.store as? VerifyingBlobStore<SQLBlobStore>)?.backend
        }
        let connection = "sql: !sql-connection {connection-string: \"postgresql://u@127.0.0.1/db\"}"
        #expect(sql(try parse("!sql-storage {\(connection)}"))?.compressionLevel == nil)
        #expect(sql(try parse("!sql-storage {\(connection), compression: zstd, compression-level: 7}"))?.compressionLevel == 7)
    }

    @Test(arguments: [
        ("!disk-storage {path: /tmp/x, compression: gzip}", "unknown compression \"gzip\""),
        ("!disk-storage {path: /tmp/x, compression-level: 5}", "compression-level needs compression: zstd"),
        ("!disk-storage {path: /tmp/x, compression: zstd, compression-level: 99}", "not a zstd level"),
        ("!lru-storage {size: 1M, compression: zstd}", "compression"),
        ("!sql-storage {sql: !sql-connection {connection-string: \"postgresql://u@127.0.0.1/db\"}, compression: lz4}", "unknown compression \"lz4\""),
        ("!s3-storage {bucket: cas, access-key: a, secret-key: b, compression: brotli}", "unknown compression \"brotli\""),
    ])
    func refusesWhatItCannotDo(storage: String, message: String) {
        #expect {
            _ = try parse(storage)
        } throws: { error in
            "\(error)".contains(message)
        }
    }
}
