import Foundation
import StrataActionCache
import StrataAPI
import StrataCore
@testable import StrataSQL
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// `IndexCleaner` and `Janitor` over `!sql-index` on `!sql-storage`, against the shared PostgreSQL:
/// real rows are deleted. Access times are the database's `now()`, so tests age rows with UPDATEs.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLCleanupTests {
    /// Writes `count` random blobs of `size` bytes through `index`.
    static func fill(_ index: SQLIndex, count: Int, size: Int) async throws -> [Blob] {
        let blobs = (0..<count).map { _ in Blob.random(size: size) }
        for result in await index.writeBatch(blobs.map { ($0.digest, $0.data) }) { try result.get() }
        return blobs
    }

    /// Moves every access time `seconds` into the past.
    static func ageAll(_ connection: SQLConnection, seconds: Int) async throws {
        try await SQLTestDatabase.execute(connection, "UPDATE strata_index SET accessed_at = accessed_at - interval '\(seconds) seconds'")
    }

    /// Moves the stored times of `digests` `seconds` into the past.
    static func ageStored(_ connection: SQLConnection, _ digests: [Digest], seconds: Int) async throws {
        for digest in digests {
            try await SQLTestDatabase.execute(connection, """
                UPDATE strata_blobs SET stored_at = now() - interval '\(seconds) seconds'
                WHERE hash = '\\x\(digest.hash)' AND size = \(digest.sizeBytes)
                """)
        }
    }

    /// Every index entry's blob is in the storage (inline ones aside), and the totals match the entries.
    static func expectConsistent(_ index: SQLIndex, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let entries = try await index.leastRecentlyAccessed(before: .distantFuture, limit: 1_000_000)
        let missing = try await index.backingStore.findMissing(index.storedInBackingStore(entries.map(\.digest)))
        #expect(missing.isEmpty, "index entries without their blob: \(missing)", sourceLocation: sourceLocation)
        let totals = try await index.totals()
        #expect(totals.blobs == Int64(entries.count), sourceLocation: sourceLocation)
        #expect(totals.bytes == entries.reduce(0) { $0 + $1.digest.sizeBytes }, sourceLocation: sourceLocation)
    }

    @Test func passDeletesLeastRecentlyUsedDownToTheLowWatermarkAndKeepsRecentlyUsedBlobs() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            let storage = SQLBlobStore(connection: connection, readOnlyConnection: readOnly)
            let index = try SQLIndex(backingStore: storage, connection: connection, readOnlyConnection: readOnly)
            let old = try await Self.fill(index, count: 30, size: 1000)
            try await Self.ageAll(connection, seconds: 4 * 3600)
            // Used within the protection window: a FindMissingBlobs hit and a read.
            #expect(try await index.findMissing(old[0..<3].map(\.digest)).isEmpty)
            _ = try await index.readAll(old[3].digest)
            let recent = try await Self.fill(index, count: 5, size: 1000)
            #expect(try await index.totals() == IndexTotals(bytes: 35_000, blobs: 35))

            let policy = CleanupPolicy(bytes: .init(high: 30_000, low: 20_000), batchSize: 3000)
            let report = try await IndexCleaner(index: index, policy: policy).runPass()
            #expect(report.triggered)
            #expect(report.deletedBlobs == 15)
            #expect(report.deletedBytes == 15_000)
            #expect(report.after.bytes <= 20_000)
            #expect(try await index.totals().bytes <= 20_000)
            // Least recently used first: only untouched old blobs went, from the storage too.
            #expect(try await storage.findMissing(old.map(\.digest)).count == 15)
            for blob in Array(old[0..<4]) + recent {
                #expect(try await index.readAll(blob.digest) == blob.data)
            }
            try await Self.expectConsistent(index)
            let second = try await IndexCleaner(index: index, policy: policy).runPass()
            #expect(!second.triggered && second.deletedBlobs == 0)
        }
    }

    @Test func protectionWindowStopsAPassAboveTheLowWatermark() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let storage = SQLBlobStore(connection: connection)
            let index = try SQLIndex(backingStore: storage, connection: connection)
            let old = try await Self.fill(index, count: 10, size: 1000)
            try await Self.ageAll(connection, seconds: 4 * 3600)
            let young = try await Self.fill(index, count: 5, size: 1000)
            let report = try await IndexCleaner(index: index, policy: CleanupPolicy(bytes: .init(high: 1000, low: 0))).runPass()
            #expect(report.deletedBlobs == 10)
            #expect(report.stoppedByProtection)
            #expect(report.after.bytes == 5000)
            #expect(try await storage.findMissing(old.map(\.digest)).count == 10)
            for blob in young { #expect(try await index.readAll(blob.digest) == blob.data) }
            try await Self.expectConsistent(index)
        }
    }

    /// Blobs uploaded while a pass runs are never lost, and a blob reported present to a client during
    /// the pass stays. Half the blobs are inline (held in the index row), half in the storage.
    @Test func concurrentUploadsAndLookupsDuringAPassAreNeverLost() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let storage = SQLBlobStore(connection: connection)
            let index = try SQLIndex(backingStore: storage, connection: connection, maxInlineBlobSize: 150)
            let old = try await Self.fill(index, count: 200, size: 100) + Self.fill(index, count: 200, size: 200)
            try await Self.ageAll(connection, seconds: 86_400)
            let policy = CleanupPolicy(bytes: .init(high: 40_000, low: 10_000), batchSize: 1000, maxBlobsPerBatch: 10)
            let cleaner = IndexCleaner(index: index, policy: policy)

            let reportedPresent = Mutex<[Digest]>([])
            let shuffled = old.shuffled()
            let toRewrite = Array(shuffled.prefix(60))
            let toLookUp = shuffled.dropFirst(60)
            async let pass = cleaner.runPass()
            async let uploads: [Blob] = {
                var written: [Blob] = []
                for round in 0..<20 { written += try await Self.fill(index, count: 5, size: round.isMultiple(of: 2) ? 100 : 200) }
                return written
            }()
            async let rewrites: Void = {
                // Blobs the pass is deleting, written again by clients meanwhile.
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
            // Every acknowledged write is kept: written before its blob's turn, the blob was in use and
            // stayed; written during its delete, it waited for the delete and stored the blob anew.
            #expect(report.rewrittenDuringDelete == 0)
            for blob in toRewrite {
                #expect(try await index.findMissing([blob.digest]).isEmpty, "a blob written again during the pass was lost")
                #expect(try await index.readAll(blob.digest) == blob.data)
            }
            let present = reportedPresent.withLock { $0 }
            #expect(!present.isEmpty)
            #expect(try await index.findMissing(present).isEmpty, "blobs reported present during the pass were deleted")
            try await Self.expectConsistent(index)
        }
    }

    /// An action-cache hit checks its outputs through the CAS (the index), which refreshes their access
    /// times: a pass after the hit keeps them, though they were written long ago.
    @Test func actionCacheHitKeepsItsOutputsAlive() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let storage = SQLBlobStore(connection: connection)
            let index = try SQLIndex(backingStore: storage, connection: connection)
            let outputs = try await Self.fill(index, count: 3, size: 1000)
            let others = try await Self.fill(index, count: 10, size: 1000)
            try await Self.ageAll(connection, seconds: 86_400)
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

            let report = try await IndexCleaner(index: index, policy: CleanupPolicy(bytes: .init(high: 1, low: 0))).runPass()
            #expect(report.deletedBlobs == 10)
            #expect(try await storage.findMissing(others.map(\.digest)).count == 10)
            for blob in outputs { #expect(try await index.readAll(blob.digest) == blob.data) }
            #expect(try await cache.get(action) == result)
        }
    }

    @Test func largeBlobsExpireAfterTheirLifetimeEvenBelowTheWatermark() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let storage = SQLBlobStore(connection: connection)
            let index = try SQLIndex(backingStore: storage, connection: connection)
            let oldLarge = try await Self.fill(index, count: 3, size: 20_000)
            let oldSmall = try await Self.fill(index, count: 3, size: 100)
            try await Self.ageAll(connection, seconds: 2 * 3600)
            let youngLarge = try await Self.fill(index, count: 2, size: 20_000)
            try await Self.ageAll(connection, seconds: 40 * 60)
            let policy = CleanupPolicy(
                bytes: .init(high: 1 << 30, low: 1 << 29), onlyIfUnusedFor: .seconds(30 * 60),
                largeBlobThreshold: 10_000, largeBlobLifetime: .seconds(3600), maxBlobsPerBatch: 2)
            let report = try await IndexCleaner(index: index, policy: policy).runPass()
            #expect(!report.triggered)
            #expect(report.expiredLargeBlobs == 3)
            #expect(report.expiredLargeBytes == 60_000)
            #expect(try await storage.findMissing(oldLarge.map(\.digest)).count == 3)
            for blob in oldSmall + youngLarge { #expect(try await index.readAll(blob.digest) == blob.data) }
            try await Self.expectConsistent(index)
        }
    }

    @Test func janitorDeletesOrphansPastTheGracePeriodAndEntriesWithoutBlobs() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            let storage = SQLBlobStore(connection: connection, readOnlyConnection: readOnly)
            let index = try SQLIndex(backingStore: storage, connection: connection, readOnlyConnection: readOnly, maxInlineBlobSize: 64)
            let indexed = (0..<5).map { _ in Blob.random(size: 300) }
            for blob in indexed { try await index.write(blob.digest, data: blob.data) }
            // Inline: in the index row only, which the storage lacking them does not make dangling.
            let inline = (0..<2).map { _ in Blob.random(size: 40) }
            for blob in inline { try await index.write(blob.digest, data: blob.data) }
            // Orphans: in the storage only, as a failed cleanup delete leaves them; aged past the grace period.
            let orphans = (0..<4).map { _ in Blob.random(size: 200) }
            for blob in orphans { try await storage.write(blob.digest, data: blob.data) }
            try await Self.ageStored(connection, orphans.map(\.digest), seconds: 7200)
            // Being written right now, as far as the janitor can tell: young and not indexed yet.
            let young = Blob.random(size: 100)
            try await storage.write(young.digest, data: young.data)
            // Dangling: the index names them, their rows are gone.
            let dangling = (0..<3).map { _ in Blob.random(size: 70) }
            for blob in dangling { try await index.write(blob.digest, data: blob.data) }
            try await storage.delete(dangling.map(\.digest))

            let janitor = try Janitor(index: index, gracePeriod: .seconds(3600), pageSize: 2)
            let dry = try await janitor.runPass(dryRun: true)
            #expect(dry.orphansDeleted == 4 && dry.danglingEntriesRemoved == 3)
            #expect(try await storage.findMissing(orphans.map(\.digest)).isEmpty)
            #expect(try await index.totals().blobs == 10)

            let report = try await janitor.runPass()
            #expect(report.blobsListed == 10)
            #expect(report.entriesListed == 10)
            #expect(report.orphansDeleted == 4)
            #expect(report.orphanBytes == 800)
            #expect(report.danglingEntriesRemoved == 3)
            #expect(report.youngBlobsSkipped == 6)
            #expect(try await storage.findMissing(orphans.map(\.digest)).count == 4)
            #expect(try await storage.findMissing([young.digest]).isEmpty)
            #expect(try await index.hasEntries(dangling.map(\.digest)) == [false, false, false])
            #expect(try await index.totals() == IndexTotals(bytes: 1580, blobs: 7))
            for blob in indexed + inline { #expect(try await index.readAll(blob.digest) == blob.data) }

            let again = try await janitor.runPass()
            #expect(again.orphansDeleted == 0 && again.danglingEntriesRemoved == 0)
        }
    }

    @Test func hasEntriesAndTheWalkDoNotRefreshAccessTimes() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection)
            let blobs = (0..<7).map { _ in Blob.random(size: 10) }
            for blob in blobs { try await index.write(blob.digest, data: blob.data) }
            try await Self.ageAll(connection, seconds: 3600)
            let absent = Blob.random(size: 3).digest
            #expect(try await index.hasEntries([blobs[0].digest, absent, blobs[1].digest]) == [true, false, true])
            var walked: [IndexEntry] = []
            var pages = 0
            try await index.forEachEntryPage(pageSize: 3) { page in
                pages += 1
                walked += page
            }
            #expect(pages == 3)
            #expect(walked.map(\.digest) == blobs.map(\.digest).sorted(), "the walk is in key order, each entry once")
            let entries = try await index.leastRecentlyAccessed(before: .distantFuture, limit: 10)
            #expect(entries.count == 7)
            for entry in entries { #expect(entry.accessed < Date().addingTimeInterval(-3000), "\(entry.digest) was refreshed") }
        }
    }

    @Test func listingReportsEveryStoredBlobOnceWithItsStoredTime() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            let storage = SQLBlobStore(connection: connection, readOnlyConnection: readOnly)
            let blobs = (0..<9).map { _ in Blob.random(size: 30) }
            for result in await storage.writeBatch(blobs.map { ($0.digest, $0.data) }) { try result.get() }
            try await Self.ageStored(connection, [blobs[0].digest], seconds: 7200)
            var listed: [StoredBlob] = []
            try await storage.forEachBlobPage(pageSize: 4) { listed += $0 }
            #expect(listed.map(\.digest) == blobs.map(\.digest).sorted())
            for blob in listed {
                let age = -blob.modified.timeIntervalSinceNow
                if blob.digest == blobs[0].digest { #expect(age > 7000) } else { #expect(age < 300) }
            }
        }
    }
}
