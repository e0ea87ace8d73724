import Foundation
import StrataActionCache
import StrataAPI
import StrataCore
import StrataRedis
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// `IndexCleaner` against the shared Redis, over a disk storage: real files are deleted.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct IndexCleanerTests {
    /// A disk storage in a fresh folder, removed after `body`.
    func withDisk<T>(_ body: (DiskBlobStore) async throws -> T) async throws -> T {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-cleanup-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        return try await body(DiskBlobStore(path: root, sync: false))
    }

    /// Writes `count` random blobs of `size` bytes through `index`.
    func fill(_ index: RedisIndex, count: Int, size: Int) async throws -> [Blob] {
        let blobs = (0..<count).map { _ in Blob.random(size: size) }
        for result in await index.writeBatch(blobs.map { ($0.digest, $0.data) }) { try result.get() }
        return blobs
    }

    /// Every index entry's blob is in the storage, and the totals match the entries.
    func expectConsistent(_ index: RedisIndex, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let entries = try await index.leastRecentlyAccessed(before: .distantFuture, limit: 1_000_000)
        let missing = try await index.backingStore.findMissing(entries.map(\.digest))
        #expect(missing.isEmpty, "index entries without their blob: \(missing)", sourceLocation: sourceLocation)
        let totals = try await index.totals()
        #expect(totals.blobs == Int64(entries.count), sourceLocation: sourceLocation)
        #expect(totals.bytes == entries.reduce(0) { $0 + $1.digest.sizeBytes }, sourceLocation: sourceLocation)
    }

    @Test func passDeletesLeastRecentlyUsedDownToTheLowWatermarkAndKeepsRecentlyUsedBlobs() async throws {
        try await withSharedRedis { client in
            try await withDisk { disk in
                let clock = ManualClock()
                let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("clean") + ":", clock: clock.function)
                let old = try await fill(index, count: 30, size: 1000)
                clock.advance(4 * 3600)
                // Used within the protection window: a FindMissingBlobs hit and a read.
                #expect(try await index.findMissing(old[0..<3].map(\.digest)).isEmpty)
                _ = try await index.readAll(old[3].digest)
                let recent = try await fill(index, count: 5, size: 1000)
                #expect(try await index.totals() == IndexTotals(bytes: 35_000, blobs: 35))

                let policy = CleanupPolicy(bytes: .init(high: 30_000, low: 20_000), batchSize: 3000)
                let report = try await IndexCleaner(index: index, policy: policy, clock: clock.function).runPass()
                #expect(report.triggered)
                #expect(report.deletedBlobs == 15)
                #expect(report.deletedBytes == 15_000)
                #expect(report.after.bytes <= 20_000)
                #expect(try await index.totals().bytes <= 20_000)
                // Least recently used first: only untouched old blobs went.
                #expect(try await disk.findMissing(old.map(\.digest)).count == 15)
                for blob in Array(old[0..<4]) + recent {
                    #expect(try await index.readAll(blob.digest) == blob.data)
                }
                try await expectConsistent(index)
                // Below the high watermark now: the next pass deletes nothing.
                let second = try await IndexCleaner(index: index, policy: policy, clock: clock.function).runPass()
                #expect(!second.triggered && second.deletedBlobs == 0)
            }
        }
    }

    @Test func blobsUsedWithinTheProtectionWindowSurviveEvenAboveTheWatermark() async throws {
        try await withSharedRedis { client in
            try await withDisk { disk in
                let clock = ManualClock()
                let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("protect") + ":", clock: clock.function)
                let old = try await fill(index, count: 10, size: 500)
                clock.advance(2 * 3600)
                let young = try await fill(index, count: 10, size: 500)
                clock.advance(2 * 3600)
                // Default protection: 3 hours. The old ones are 4 h unused, the young ones 2 h.
                let policy = CleanupPolicy(bytes: .init(high: 1000, low: 0))
                #expect(policy.onlyIfUnusedFor == .seconds(3 * 3600))
                let report = try await IndexCleaner(index: index, policy: policy, clock: clock.function).runPass()
                #expect(report.deletedBlobs == 10)
                #expect(report.stoppedByProtection)
                #expect(report.after.bytes == 5000)
                #expect(try await disk.findMissing(old.map(\.digest)).count == 10)
                for blob in young { #expect(try await index.readAll(blob.digest) == blob.data) }
                try await expectConsistent(index)
            }
        }
    }

    @Test func blobCountWatermarks() async throws {
        try await withSharedRedis { client in
            try await withDisk { disk in
                let clock = ManualClock()
                let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("count") + ":", clock: clock.function)
                _ = try await fill(index, count: 25, size: 10)
                clock.advance(4 * 3600)
                let policy = CleanupPolicy(blobCount: .init(high: 20, low: 12), batchSize: 1, maxBlobsPerBatch: 5)
                let report = try await IndexCleaner(index: index, policy: policy, clock: clock.function).runPass()
                #expect(report.deletedBlobs == 13)
                #expect(try await index.totals().blobs == 12)
                try await expectConsistent(index)
            }
        }
    }

    @Test func dryRunDeletesNothingAndListsWhatAPassWould() async throws {
        try await withSharedRedis { client in
            try await withDisk { disk in
                let clock = ManualClock()
                let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("dry") + ":", clock: clock.function)
                let blobs = try await fill(index, count: 20, size: 100)
                clock.advance(4 * 3600)
                let policy = CleanupPolicy(bytes: .init(high: 1500, low: 1200))
                let cleaner = IndexCleaner(index: index, policy: policy, clock: clock.function)
                let dry = try await cleaner.runPass(dryRun: true)
                #expect(dry.wouldDelete.count == 8)
                #expect(Set(dry.wouldDelete.map(\.digest)).isSubset(of: Set(blobs.map(\.digest))))
                #expect(dry.deletedBlobs == 0)
                #expect(try await index.totals() == IndexTotals(bytes: 2000, blobs: 20))
                #expect(try await disk.findMissing(blobs.map(\.digest)).isEmpty)
                // The real pass deletes exactly what the dry run listed.
                let real = try await cleaner.runPass()
                #expect(real.deletedBlobs == 8)
                #expect(try Set(await disk.findMissing(blobs.map(\.digest))) == Set(dry.wouldDelete.map(\.digest)))
            }
        }
    }

    @Test func largeBlobsExpireAfterTheirLifetimeEvenBelowTheWatermark() async throws {
        try await withSharedRedis { client in
            try await withDisk { disk in
                let clock = ManualClock()
                let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("large") + ":", clock: clock.function)
                let oldLarge = try await fill(index, count: 3, size: 20_000)
                let oldSmall = try await fill(index, count: 3, size: 100)
                clock.advance(2 * 3600)
                let youngLarge = try await fill(index, count: 2, size: 20_000)
                clock.advance(40 * 60)
                let policy = CleanupPolicy(
                    bytes: .init(high: 1 << 30, low: 1 << 29), onlyIfUnusedFor: .seconds(30 * 60),
                    largeBlobThreshold: 10_000, largeBlobLifetime: .seconds(3600))
                let report = try await IndexCleaner(index: index, policy: policy, clock: clock.function).runPass()
                #expect(!report.triggered)
                #expect(report.expiredLargeBlobs == 3)
                #expect(report.expiredLargeBytes == 60_000)
                #expect(try await disk.findMissing(oldLarge.map(\.digest)).count == 3)
                for blob in oldSmall + youngLarge { #expect(try await index.readAll(blob.digest) == blob.data) }
                try await expectConsistent(index)
            }
        }
    }

    /// Blobs uploaded while a pass runs are never lost, including blobs the pass is deleting, and a blob
    /// reported present to a client during the pass (its access time refreshed before the removal's
    /// re-check) stays.
    @Test func concurrentUploadsAndLookupsDuringAPassAreNeverLost() async throws {
        try await withSharedRedis { client in
            try await withDisk { disk in
                let prefix = TestServices.uniqueName("concurrent") + ":"
                let dayAgo = Date().addingTimeInterval(-86_400)
                let past = RedisIndex(backingStore: disk, client: client, prefix: prefix, clock: { dayAgo })
                let index = RedisIndex(backingStore: disk, client: client, prefix: prefix)
                let old = try await fill(past, count: 400, size: 200)
                let policy = CleanupPolicy(bytes: .init(high: 40_000, low: 10_000), batchSize: 1000, maxBlobsPerBatch: 10)
                let cleaner = IndexCleaner(index: index, policy: policy)

                let reportedPresent = Mutex<[Digest]>([])
                let shuffled = old.shuffled()
                let toRewrite = Array(shuffled.prefix(60))
                let toLookUp = shuffled.dropFirst(60)
                async let pass = cleaner.runPass()
                async let uploads: [Blob] = {
                    var written: [Blob] = []
                    for _ in 0..<20 { written += try await fill(index, count: 5, size: 200) }
                    return written
                }()
                async let rewrites: Void = {
                    // Blobs the pass is deleting, written again by clients meanwhile (the storage skips
                    // a write of a blob it still has).
                    for blob in toRewrite { try await index.write(blob.digest, data: blob.data) }
                }()
                async let lookups: Void = {
                    for blob in toLookUp {
                        if try await index.findMissing([blob.digest]).isEmpty {
                            reportedPresent.withLock { $0.append(blob.digest) }
                        }
                    }
                }()
                let (report, uploaded, _, _) = try await (pass, uploads, rewrites, lookups)
                #expect(report.deletedBlobs > 0)
                for blob in uploaded { #expect(try await index.readAll(blob.digest) == blob.data) }
                #expect(report.rewrittenDuringDelete == 0)
                for blob in toRewrite {
                    #expect(try await index.findMissing([blob.digest]).isEmpty, "a blob written again during the pass was lost")
                    #expect(try await index.readAll(blob.digest) == blob.data)
                }
                let present = reportedPresent.withLock { $0 }
                #expect(!present.isEmpty)
                #expect(try await disk.findMissing(present).isEmpty, "blobs reported present during the pass were deleted")
                try await expectConsistent(index)
            }
        }
    }

    /// An action-cache hit checks its outputs through the CAS (the index), which refreshes their access
    /// times: a pass running after the hit keeps them, though they were written long ago.
    @Test func actionCacheHitKeepsItsOutputsAlive() async throws {
        try await withSharedRedis { client in
            try await withDisk { disk in
                let prefix = TestServices.uniqueName("achit") + ":"
                let dayAgo = Date().addingTimeInterval(-86_400)
                let past = RedisIndex(backingStore: disk, client: client, prefix: prefix, clock: { dayAgo })
                let index = RedisIndex(backingStore: disk, client: client, prefix: prefix)
                let outputs = try await fill(past, count: 3, size: 1000)
                let others = try await fill(past, count: 10, size: 1000)
                let cache = CompletenessCheckingActionCache(LRUActionCache(maxEntries: 10), cas: index)
                let action = Blob.random(size: 50).digest
                let result = ActionResult.with { result in
                    result.outputFiles = outputs.enumerated().map { position, blob in
                        .with { file in
                            file.path = "out/\(position)"
                            file.digest = .with { $0.hash = blob.digest.hash; $0.sizeBytes = blob.digest.sizeBytes }
                        }
                    }
                }
                try await cache.update(action, result)
                #expect(try await cache.get(action) == result)

                let policy = CleanupPolicy(bytes: .init(high: 1, low: 0))
                let report = try await IndexCleaner(index: index, policy: policy).runPass()
                #expect(report.deletedBlobs == 10)
                #expect(try await disk.findMissing(others.map(\.digest)).count == 10)
                for blob in outputs { #expect(try await index.readAll(blob.digest) == blob.data) }
                #expect(try await cache.get(action) == result)
            }
        }
    }

    @Test func failedStorageDeleteLeavesOrphansNeverEntriesWithoutBlobs() async throws {
        try await withSharedRedis { client in
            let clock = ManualClock()
            let backing = FailingDeleteStore(LRUBlobStore(capacityBytes: 1 << 20))
            let index = RedisIndex(backingStore: backing, client: client, prefix: TestServices.uniqueName("orphan") + ":", clock: clock.function)
            let blobs = try await fill(index, count: 5, size: 100)
            clock.advance(4 * 3600)
            let report = try await IndexCleaner(index: index, policy: CleanupPolicy(bytes: .init(high: 100, low: 0), retryLimit: 1), clock: clock.function).runPass()
            #expect(report.orphansLeft == 5)
            #expect(report.deletedBlobs == 0)
            #expect(try await index.totals() == IndexTotals(bytes: 0, blobs: 0))
            // The blobs are still stored (orphans for the janitor); the index no longer names them.
            #expect(try await backing.base.findMissing(blobs.map(\.digest)).isEmpty)
            #expect(try await index.findMissing(blobs.map(\.digest)).count == 5)
        }
    }
}

/// A store whose deletes fail as a storage outage would.
struct FailingDeleteStore: BlobStore {
    let base: any BlobStore
    init(_ base: any BlobStore) { self.base = base }
    func findMissing(_ digests: [Digest]) async throws -> [Digest] { try await base.findMissing(digests) }
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody { try await base.read(digest, offset: offset, limit: limit) }
    func write(_ digest: Digest, body: BlobBody) async throws { try await base.write(digest, body: body) }
    func delete(_ digests: [Digest]) async throws { throw StrataError.unavailable("test storage: deletes are down") }
}
