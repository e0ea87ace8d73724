import Foundation
import StrataConfig
import StrataCore
import StrataStorage
import Testing

/// `compression:` of `!disk-storage`: off by default, zstd with an optional level, refused elsewhere.
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

    @Test(arguments: [
        ("!disk-storage {path: /tmp/x, compression: gzip}", "unknown compression \"gzip\""),
        ("!disk-storage {path: /tmp/x, compression-level: 5}", "compression-level needs compression: zstd"),
        ("!disk-storage {path: /tmp/x, compression: zstd, compression-level: 99}", "not a zstd level"),
        ("!lru-storage {size: 1M, compression: zstd}", "compression"),
    ])
    func refusesWhatItCannotDo(storage: String, message: String) {
        #expect {
            _ = try parse(storage)
        } throws: { error in
            "\(error)".contains(message)
        }
    }
}
