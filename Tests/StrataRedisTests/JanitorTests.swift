import CoreMetrics
import Foundation
import StrataCore
import StrataRedis
import StrataStorage
import StrataTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The janitor against the shared Redis, over a disk storage.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct JanitorTests {
    /// With `monitoring:` on, an index's storage is behind a metrics decorator (and a disk storage
    /// behind read verification): the janitor lists the storage beneath them.
    @Test func listsTheStorageBehindMetricsAndVerification() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-janitor-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withSharedRedis { client in
            let disk = DiskBlobStore(path: root, sync: false)
            let decorated = MetricsBlobStore(
                VerifyingBlobStore(disk, name: "disk storage \(root)"), backend: "disk-storage", name: "storages[0]",
                factory: NOOPMetricsHandler.instance)
            let index = RedisIndex(backingStore: decorated, client: client, prefix: TestServices.uniqueName("janitor") + ":")
            let orphan = Blob.random(size: 200)
            try await disk.write(orphan.digest, data: orphan.data)
            try age(disk.root.path, orphan.digest, seconds: 7200)
            let janitor = try Janitor(index: index, gracePeriod: .seconds(3600), maxDeleteShare: nil)
            #expect(try await janitor.runPass(dryRun: true).orphansDeleted == 1)
        }
    }

    @Test func deletesOrphansPastTheGracePeriodAndEntriesWithoutBlobs() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-janitor-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withSharedRedis { client in
            let disk = DiskBlobStore(path: root, sync: false)
            let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("janitor") + ":")
            let indexed = (0..<5).map { _ in Blob.random(size: 300) }
            for blob in indexed { try await index.write(blob.digest, data: blob.data) }
            // Orphans: in the storage only, as a failed cleanup delete leaves them; aged past the grace period.
            let orphans = (0..<4).map { _ in Blob.random(size: 200) }
            for blob in orphans {
                try await disk.write(blob.digest, data: blob.data)
                try age(disk.root.path, blob.digest, seconds: 7200)
            }
            // Being written right now, as far as the janitor can tell: young and not indexed yet.
            let young = Blob.random(size: 100)
            try await disk.write(young.digest, data: young.data)
            // Dangling: the index names them, their files are gone.
            let dangling = (0..<3).map { _ in Blob.random(size: 50) }
            for blob in dangling { try await index.write(blob.digest, data: blob.data) }
            try await disk.delete(dangling.map(\.digest))

            let janitor = try Janitor(index: index, gracePeriod: .seconds(3600), pageSize: 2)
            let dry = try await janitor.runPass(dryRun: true)
            #expect(dry.orphansDeleted == 4 && dry.danglingEntriesRemoved == 3)
            #expect(try await disk.findMissing(orphans.map(\.digest)).isEmpty)
            #expect(try await index.totals().blobs == 8)

            let report = try await janitor.runPass()
            #expect(report.orphansDeleted == 4)
            #expect(report.orphanBytes == 800)
            #expect(report.danglingEntriesRemoved == 3)
            #expect(report.youngBlobsSkipped >= 6)
            #expect(try await disk.findMissing(orphans.map(\.digest)).count == 4)
            #expect(try await disk.findMissing([young.digest]).isEmpty)
            #expect(try await index.hasEntries(dangling.map(\.digest)) == [false, false, false])
            #expect(try await index.totals() == IndexTotals(bytes: 1500, blobs: 5))
            for blob in indexed { #expect(try await index.readAll(blob.digest) == blob.data) }

            let again = try await janitor.runPass()
            #expect(again.orphansDeleted == 0 && again.danglingEntriesRemoved == 0)
        }
    }

    /// So many orphans mean the index is not the one recording the storage's writes (here: blobs written
    /// past it): the janitor deletes none of them unless forced.
    @Test func refusesToDeleteMoreThanItsShareOfTheStorageUnlessForced() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-janitor-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withSharedRedis { client in
            let disk = DiskBlobStore(path: root, sync: false)
            let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("share") + ":")
            let indexed = (0..<4).map { _ in Blob.random(size: 100) }
            for blob in indexed { try await index.write(blob.digest, data: blob.data) }
            let unindexed = (0..<6).map { _ in Blob.random(size: 100) }
            for blob in unindexed {
                try await disk.write(blob.digest, data: blob.data)
                try age(disk.root.path, blob.digest, seconds: 7200)
            }
            let janitor = try Janitor(index: index, gracePeriod: .seconds(3600))
            #expect(janitor.maxDeleteShare == 0.5)
            do {
                _ = try await janitor.runPass()
                Issue.record("the janitor deleted 6 of 10 blobs")
            } catch let error as StrataError {
                #expect(error.code == .failedPrecondition)
                #expect(error.message.contains("refusing to delete 6 of the 10 blobs in the storage (60%)"), "\(error)")
                #expect(error.message.contains("--force"), "\(error)")
            }
            #expect(try await disk.findMissing(unindexed.map(\.digest)).isEmpty)
            // A dry run still reports them; a larger share, or --force, deletes them.
            #expect(try await janitor.runPass(dryRun: true).orphansDeleted == 6)
            #expect(try await Janitor(index: index, gracePeriod: .seconds(3600), maxDeleteShare: 0.6).runPass().orphansDeleted == 6)
            for blob in unindexed { try await disk.write(blob.digest, data: blob.data); try age(disk.root.path, blob.digest, seconds: 7200) }
            let forced = try await Janitor(index: index, gracePeriod: .seconds(3600), maxDeleteShare: nil).runPass()
            #expect(forced.orphansDeleted == 6)
            #expect(try await disk.findMissing(unindexed.map(\.digest)).count == 6)
            for blob in indexed { #expect(try await index.readAll(blob.digest) == blob.data) }
        }
    }

    @Test func hasEntriesDoesNotRefreshAccessTimes() async throws {
        try await withSharedRedis { client in
            let clock = ManualClock()
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 1 << 20), client: client,
                prefix: TestServices.uniqueName("has") + ":", clock: clock.function)
            let blob = Blob.random(size: 10)
            try await index.write(blob.digest, data: blob.data)
            clock.advance(100)
            #expect(try await index.hasEntries([blob.digest, Blob.random(size: 3).digest]) == [true, false])
            let entry = try await index.leastRecentlyAccessed(before: .distantFuture, limit: 10).first
            #expect(entry?.accessed == clock.now - 100)
            var walked: [IndexEntry] = []
            try await index.forEachEntryPage(pageSize: 1) { walked += $0 }
            #expect(walked.map(\.digest) == [blob.digest])
        }
    }
}

/// Moves a blob file's access and modification times `seconds` into the past.
func age(_ root: String, _ digest: Digest, seconds: Double) throws {
    let path = "\(root)/cas/\(digest.hash.prefix(2))/\(digest.hash)_\(digest.sizeBytes)"
    let when = Date().addingTimeInterval(-seconds).timeIntervalSince1970
    var times = [timespec(tv_sec: Int(when), tv_nsec: 0), timespec(tv_sec: Int(when), tv_nsec: 0)]
    guard utimensat(AT_FDCWD, path, &times, 0) == 0 else { throw ConformanceFailure("utimensat \(path) failed") }
}
