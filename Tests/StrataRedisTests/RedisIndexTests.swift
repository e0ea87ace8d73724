import Foundation
import StrataCore
@testable import StrataRedis
import StrataStorage
import StrataTestSupport
import Testing

@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct RedisIndexTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformanceOverLRU(_ check: BlobStoreConformance) async throws {
        try await withSharedRedis { client in
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 256 << 20), client: client,
                prefix: TestServices.uniqueName("lru") + ":")
            try await check.run(on: index)
        }
    }

    @Test(arguments: BlobStoreConformance.cases)
    func conformanceOverDisk(_ check: BlobStoreConformance) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-redis-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withSharedRedis { client in
            let index = RedisIndex(
                backingStore: DiskBlobStore(path: root, sync: false), client: client,
                prefix: TestServices.uniqueName("disk") + ":")
            try await check.run(on: index)
        }
    }

    /// The entry of `digest`, found through the LRU listing.
    func accessTime(_ index: RedisIndex, _ digest: Digest) async throws -> Date? {
        try await index.leastRecentlyAccessed(before: .distantFuture, limit: 1000).first { $0.digest == digest }?.accessed
    }

    @Test func findMissingReadAndWriteRefreshAccessTimes() async throws {
        try await withSharedRedis { client in
            let clock = ManualClock()
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 1 << 20), client: client,
                prefix: TestServices.uniqueName("access") + ":", clock: clock.function)
            let blob = Blob.random(size: 321)
            let start = clock.now
            try await index.write(blob.digest, data: blob.data)
            #expect(try await accessTime(index, blob.digest) == start)

            clock.advance(10)
            #expect(try await index.findMissing([blob.digest]).isEmpty)
            #expect(try await accessTime(index, blob.digest) == start + 10)

            clock.advance(10)
            #expect(try await index.readAll(blob.digest) == blob.data)
            #expect(try await accessTime(index, blob.digest) == start + 20)

            clock.advance(10)
            #expect(try await index.readBatch([blob.digest]).map { try $0.get() } == [blob.data])
            #expect(try await accessTime(index, blob.digest) == start + 30)

            clock.advance(10)
            try await index.write(blob.digest, data: blob.data)
            #expect(try await accessTime(index, blob.digest) == start + 40)

            // Access times only move forward: a server with a slow clock does not make a blob look older.
            clock.set(start)
            #expect(try await index.findMissing([blob.digest]).isEmpty)
            #expect(try await accessTime(index, blob.digest) == start + 40)
            #expect(try await index.totals() == IndexTotals(bytes: 321, blobs: 1))
        }
    }

    @Test func refreshAccessTimeOlderThanBoundsRewrites() async throws {
        try await withSharedRedis { client in
            let clock = ManualClock()
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 1 << 20), client: client,
                prefix: TestServices.uniqueName("refresh") + ":", refreshAccessTimeOlderThan: .seconds(60),
                clock: clock.function)
            let blob = Blob.random(size: 50)
            let start = clock.now
            try await index.write(blob.digest, data: blob.data)
            clock.advance(59)
            #expect(try await index.findMissing([blob.digest]).isEmpty)
            _ = try await index.readAll(blob.digest)
            #expect(try await accessTime(index, blob.digest) == start, "an access time younger than 60 s was rewritten")
            clock.advance(2)
            #expect(try await index.findMissing([blob.digest]).isEmpty)
            #expect(try await accessTime(index, blob.digest) == start + 61)
        }
    }

    @Test func leastRecentlyAccessedOrderAndCutoff() async throws {
        try await withSharedRedis { client in
            let clock = ManualClock()
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 1 << 20), client: client,
                prefix: TestServices.uniqueName("order") + ":", clock: clock.function)
            let start = clock.now
            let blobs = (0..<5).map { Blob.random(size: 10 + $0) }
            for blob in blobs {
                clock.advance(1)
                try await index.write(blob.digest, data: blob.data)
            }
            // Blob 0, the oldest, is used again and becomes the newest.
            clock.advance(1)
            #expect(try await index.findMissing([blobs[0].digest]).isEmpty)

            let all = try await index.leastRecentlyAccessed(before: .distantFuture, limit: 100)
            #expect(all.map(\.digest) == [1, 2, 3, 4, 0].map { blobs[$0].digest })
            #expect(all.map(\.accessed) == [2, 3, 4, 5, 6].map { start + TimeInterval($0) })

            // Strictly before the cutoff: blob 3, accessed at exactly +4, is not listed.
            let old = try await index.leastRecentlyAccessed(before: start + 4, limit: 100)
            #expect(old.map(\.digest) == [blobs[1].digest, blobs[2].digest])
            let limited = try await index.leastRecentlyAccessed(before: .distantFuture, limit: 3)
            #expect(limited.map(\.digest) == [1, 2, 3].map { blobs[$0].digest })
            #expect(try await index.leastRecentlyAccessed(before: start, limit: 100).isEmpty)
        }
    }

    @Test func removeEntriesKeepsBlobsTouchedAfterTheCutoff() async throws {
        try await withSharedRedis { client in
            let clock = ManualClock()
            let backing = LRUBlobStore(capacityBytes: 1 << 20)
            let index = RedisIndex(
                backingStore: backing, client: client, prefix: TestServices.uniqueName("remove") + ":",
                clock: clock.function)
            let kept = Blob.random(size: 1000)
            let expired = Blob.random(size: 2000)
            try await index.write(kept.digest, data: kept.data)
            try await index.write(expired.digest, data: expired.data)
            clock.advance(100)
            let cutoff = clock.now
            let candidates = try await index.leastRecentlyAccessed(before: cutoff, limit: 10).map(\.digest)
            #expect(Set(candidates) == [kept.digest, expired.digest])

            // Between listing and removal a client uses one of them.
            clock.advance(1)
            #expect(try await index.findMissing([kept.digest]).isEmpty)

            let removed = try await index.removeEntries(candidates + [Blob.random(size: 5).digest], notAccessedSince: cutoff)
            #expect(removed == [expired.digest])
            #expect(try await index.findMissing([kept.digest, expired.digest]) == [expired.digest])
            #expect(try await index.totals() == IndexTotals(bytes: 1000, blobs: 1))
            // The caller deletes the removed blobs from the backing storage; the index leaves them.
            #expect(try await backing.findMissing([expired.digest]).isEmpty)
            // Removing again finds nothing to remove.
            #expect(try await index.removeEntries([expired.digest], notAccessedSince: cutoff).isEmpty)
        }
    }

    @Test func totalsFollowWritesDeletesAndRemovals() async throws {
        try await withSharedRedis { client in
            let clock = ManualClock()
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 1 << 20), client: client,
                prefix: TestServices.uniqueName("totals") + ":", clock: clock.function)
            #expect(try await index.totals() == IndexTotals(bytes: 0, blobs: 0))
            let blobs = [100, 200, 300, 400].map { Blob.random(size: $0) }
            for blob in blobs.prefix(3) { try await index.write(blob.digest, data: blob.data) }
            #expect(try await index.totals() == IndexTotals(bytes: 600, blobs: 3))
            try await index.write(blobs[0].digest, data: blobs[0].data)
            try await index.write(Digest.emptySHA256, data: Data())
            #expect(try await index.totals() == IndexTotals(bytes: 600, blobs: 3), "a rewrite or the empty blob was counted")

            let results = await index.writeBatch([(blobs[1].digest, blobs[1].data), (blobs[3].digest, blobs[3].data)])
            #expect(results.allSatisfy { (try? $0.get()) != nil })
            #expect(try await index.totals() == IndexTotals(bytes: 1000, blobs: 4))

            try await index.delete([blobs[2].digest, blobs[2].digest, Blob.random(size: 7).digest])
            #expect(try await index.totals() == IndexTotals(bytes: 700, blobs: 3))

            clock.advance(10)
            #expect(try await index.removeEntries([blobs[0].digest, blobs[2].digest], notAccessedSince: clock.now) == [blobs[0].digest])
            #expect(try await index.totals() == IndexTotals(bytes: 600, blobs: 2))
        }
    }

    @Test func concurrentWritersCountEachBlobOnce() async throws {
        try await withSharedRedis({ $0.poolSize = 8 }) { client in
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 64 << 20), client: client,
                prefix: TestServices.uniqueName("concurrent") + ":")
            let blobs = (0..<40).map { Blob.random(size: 1000 + $0) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<12 {
                    group.addTask {
                        if writer.isMultiple(of: 2) {
                            for blob in blobs.shuffled() { try await index.write(blob.digest, data: blob.data) }
                        } else {
                            let results = await index.writeBatch(blobs.shuffled().map { ($0.digest, $0.data) })
                            for result in results { try result.get() }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let expectedBytes = blobs.reduce(Int64(0)) { $0 + $1.digest.sizeBytes }
            #expect(try await index.totals() == IndexTotals(bytes: expectedBytes, blobs: 40))

            // Concurrent deleters uncount each blob once too.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<6 { group.addTask { try await index.delete(blobs.prefix(20).shuffled().map(\.digest)) } }
                try await group.waitForAll()
            }
            let remainingBytes = blobs.suffix(20).reduce(Int64(0)) { $0 + $1.digest.sizeBytes }
            #expect(try await index.totals() == IndexTotals(bytes: remainingBytes, blobs: 20))
        }
    }

    @Test func findMissingIsAnsweredByTheIndexAndReadsHealIt() async throws {
        try await withSharedRedis { client in
            let backing = LRUBlobStore(capacityBytes: 1 << 20)
            let index = RedisIndex(backingStore: backing, client: client, prefix: TestServices.uniqueName("heal") + ":")
            let lost = Blob.random(size: 900)
            let lostInBatch = Blob.random(size: 800)
            let kept = Blob.random(size: 700)
            for blob in [lost, lostInBatch, kept] { try await index.write(blob.digest, data: blob.data) }
            // The backing storage loses two blobs behind the index's back.
            try await backing.delete([lost.digest, lostInBatch.digest])

            // findMissing trusts the index: it does not ask the backing storage.
            #expect(try await index.findMissing([lost.digest, kept.digest]).isEmpty)

            await expectStrataError(.notFound, "reading a blob the backing storage lost") {
                _ = try await index.readAll(lost.digest)
            }
            #expect(try await index.findMissing([lost.digest, kept.digest]) == [lost.digest])
            #expect(try await index.totals() == IndexTotals(bytes: 1500, blobs: 2))

            let batch = await index.readBatch([kept.digest, lostInBatch.digest])
            #expect((try? batch[0].get()) == kept.data)
            try expectFailure(batch[1], .notFound, "batch-reading a lost blob")
            #expect(try await index.findMissing([lostInBatch.digest, kept.digest]) == [lostInBatch.digest])
            #expect(try await index.totals() == IndexTotals(bytes: 700, blobs: 1))

            // Writing it again restores the entry.
            try await index.write(lost.digest, data: lost.data)
            #expect(try await index.readAll(lost.digest) == lost.data)
            #expect(try await index.totals() == IndexTotals(bytes: 1600, blobs: 2))
        }
    }

    @Test func largeFindMissingSpansSeveralScripts() async throws {
        try await withSharedRedis { client in
            let index = RedisIndex(
                backingStore: LRUBlobStore(capacityBytes: 64 << 20), client: client,
                prefix: TestServices.uniqueName("large") + ":")
            let blobs = (0..<2500).map { Blob.random(size: 8 + $0 % 5) }
            let stored = blobs.enumerated().filter { $0.offset % 3 == 0 }.map(\.element)
            let results = await index.writeBatch(stored.map { ($0.digest, $0.data) })
            #expect(results.allSatisfy { (try? $0.get()) != nil })
            let missing = try await index.findMissing(blobs.map(\.digest))
            #expect(missing == blobs.enumerated().filter { $0.offset % 3 != 0 }.map(\.element.digest))
            #expect(try await index.totals().blobs == Int64(stored.count))
        }
    }

    /// The client sends a pipeline again when the connection breaks before the answer, so a script may
    /// run twice: the marks must come out as if it ran once.
    @Test func markScriptsRunTwiceCountOnce() async throws {
        try await withSharedRedis { client in
            let disk = DiskBlobStore(path: FileManager.default.temporaryDirectory.appendingPathComponent("strata-idem-\(UUID().uuidString)").path, sync: false)
            let index = RedisIndex(backingStore: disk, client: client, prefix: TestServices.uniqueName("idem") + ":")
            let blob = Blob.random(size: 500)
            try await index.write(blob.digest, data: blob.data)

            // Two writers of one blob; the first one's end arrives twice. The second still holds its mark.
            let first = RedisIndex.WriteToken(), second = RedisIndex.WriteToken()
            try await index.beginWriting([blob.digest], first)
            try await index.beginWriting([blob.digest], second)
            try await index.record([blob.digest], first)
            try await index.record([blob.digest], first)
            #expect(try await index.removeEntries([blob.digest], notAccessedSince: .distantFuture).isEmpty,
                    "a repeated end of one write dropped another writer's mark")
            try await index.endWriting([blob.digest], second)
            // A start that arrives twice is still one write: its one end clears the mark.
            let other = Blob.random(size: 400)
            try await index.write(other.digest, data: other.data)
            let third = RedisIndex.WriteToken()
            try await index.beginWriting([other.digest], third)
            try await index.beginWriting([other.digest], third)
            try await index.endWriting([other.digest], third)
            #expect(try await index.removeEntries([other.digest], notAccessedSince: .distantFuture) == [other.digest],
                    "a repeated start of one write left a mark after its end")
            try await index.finishDeleting([other.digest])

            // A removal sent twice answers the blob both times, so the cleaner deletes it and clears its mark.
            let command = RedisCommand.script(
                RedisIndex.removeIfNotAccessedSince,
                keys: [index.accessKey, index.totalsKey, index.writingKey, index.deletingKey, index.deletersKey],
                arguments: [String(Int64(Date.distantFuture.timeIntervalSince1970 * 1000)), "60000", "removal-1", RedisIndex.member(blob.digest)])
            let once = try await client.send(command)
            let twice = try await client.send(command)
            #expect(once.array?.count == 1 && twice.array?.count == 1, "\(once) / \(twice)")
            #expect(try await index.totals() == IndexTotals(bytes: 0, blobs: 0), "a removal sent twice uncounted twice")
            // Another removal (another token) does not take a blob this one is deleting.
            #expect(try await index.removeEntries([blob.digest], notAccessedSince: .distantFuture).isEmpty)
            try await index.finishDeleting([blob.digest])
        }
    }

    /// Writes and deletes of one blob never overlap: an upload during a cleanup delete is kept.
    @Test(arguments: IndexMarksConformance.cases)
    func writeAndDeleteMarks(_ check: IndexMarksConformance) async throws {
        try await withSharedRedis { client in
            let prefix = TestServices.uniqueName("marks") + ":"
            try await check.run { backing, lease in
                RedisIndex(backingStore: backing, client: client, prefix: prefix, deletionLease: lease)
            }
        }
    }
}
