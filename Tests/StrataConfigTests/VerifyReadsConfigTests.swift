import Foundation
import StrataConfig
import StrataCore
import StrataRemote
import StrataStorage
import Testing

/// Every persistent storage is wrapped in a `VerifyingBlobStore`, hashing reads unless `verify-reads: false`.
@Suite struct VerifyReadsConfigTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-verify-config-\(UUID().uuidString)").path

    func parse(_ storages: String) throws -> Configuration {
        try Configuration.parse(yaml: """
            server: [!channel {address: "127.0.0.1:1", insecure-mode: true}]
            storages:
            \(storages)
            instances:
              - name: ""
                services: [!cas {storage: *cas}]
            """, file: "test.yml", environment: ["DATA": scratch])
    }

    @Test func diskAndRemoteStoragesVerifyReadsUnlessTurnedOff() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let verified = try parse("  - &cas !disk-storage {path: !expand-path \"${DATA}/a\"}")
        #expect((verified.instances[0].cas?.store as? VerifyingBlobStore<DiskBlobStore>)?.verifyReads == true)
        let trusted = try parse("  - &cas !disk-storage {path: !expand-path \"${DATA}/b\", verify-reads: false}")
        #expect((trusted.instances[0].cas?.store as? VerifyingBlobStore<DiskBlobStore>)?.verifyReads == false)
        let remote = try parse("  - &cas !remote-storage {url: \"grpc://127.0.0.1:50052\", verify-reads: false}")
        #expect((remote.instances[0].cas?.store as? VerifyingBlobStore<RemoteBlobStore>)?.verifyReads == false)
        // The in-memory LRU verified its blobs on write, and they never leave memory: no wrapper.
        let memory = try parse("  - &cas !lru-storage {size: 1M}")
        #expect(memory.instances[0].cas?.store is LRUBlobStore)
        #expect(throws: ConfigError.self) { try parse("  - &cas !disk-storage {path: !expand-path \"${DATA}/c\", verify-reads: maybe}") }
    }
}

extension VerifyReadsConfigTests {
    /// `strata scrub` finds every listable persistent storage, and removes through the index on it.
    @Test func scrubTargetsAreTheListableStorages() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configuration = try Configuration.parse(yaml: """
            server: [!channel {address: "127.0.0.1:1", insecure-mode: true}]
            storages:
              - &plain !disk-storage {path: !expand-path "${DATA}/plain"}
              - &indexed !disk-storage {path: !expand-path "${DATA}/indexed"}
              - &cas !redis-index {storage: *indexed, redis: !redis-connection {host: 127.0.0.1}}
              - &memory !lru-storage {size: 1M}
              - &remote !remote-storage {url: "grpc://127.0.0.1:50052"}
            instances:
              - name: ""
                services: [!cas {storage: *cas}, !bytestream {storage: *plain}]
            """, file: "test.yml", environment: ["DATA": scratch])
        let targets = configuration.scrubTargets
        #expect(targets.map(\.name) == ["disk storage \(scratch)/indexed", "disk storage \(scratch)/plain"])
        #expect(targets.map(\.indexed) == [true, false])
        #expect(targets[0].remover is any IndexedBlobStore)
        #expect(targets.allSatisfy { $0.storage is DiskBlobStore })
    }
}
