import Foundation
import StrataCore
import StrataRedis
import StrataStorage
import StrataTestSupport
import Testing

/// Under `!redis-index`, a copy found corrupt takes its index entry with it: FindMissingBlobs (answered
/// by the index) reports the blob missing, and the client's upload heals it.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct RedisCorruptionTests {
    @Test func indexDropsTheEntryOfACorruptDiskCopy() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-redis-corrupt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withSharedRedis { client in
            let disk = VerifyingBlobStore(try DiskBlobStore(path: root, sync: false), name: "disk storage \(root)")
            let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("corrupt") + ":")
            try await CorruptionScenario.run(on: index, size: (1 << 20) + 999) { blob in
                let file = "\(root)/cas/\(blob.digest.hash.prefix(2))/\(blob.digest.hash)_\(blob.digest.sizeBytes)"
                try CorruptionScenario.flipped(blob.data).write(to: URL(fileURLWithPath: file))
            }
        }
    }
}

extension RedisCorruptionTests {
    /// `strata scrub` under an index removes through it: the entry goes with the blob.
    @Test func scrubRemovesThroughTheIndex() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-redis-scrub-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withSharedRedis { client in
            let backend = try DiskBlobStore(path: root, sync: false)
            let disk = VerifyingBlobStore(backend, name: "disk storage \(root)")
            let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("scrub") + ":")
            let good = Blob.random(size: 3000), bad = Blob.random(size: 4000)
            for blob in [good, bad] { try await index.write(blob.digest, data: blob.data) }
            let file = "\(root)/cas/\(bad.digest.hash.prefix(2))/\(bad.digest.hash)_\(bad.digest.sizeBytes)"
            try CorruptionScenario.flipped(bad.data).write(to: URL(fileURLWithPath: file))
            let report = try await Scrubber(storage: backend, remover: index, bytesPerSecond: nil).runPass()
            #expect((report.checked, report.corrupt, report.removed) == (2, 1, 1))
            #expect(try await index.findMissing([good.digest, bad.digest]) == [bad.digest])
            #expect(try await index.hasEntries([good.digest, bad.digest]) == [true, false])
        }
    }
}
