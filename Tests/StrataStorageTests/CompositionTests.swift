import Foundation
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

private func lru() -> LRUBlobStore { LRUBlobStore(capacityBytes: 512 << 20) }

/// Polls until `condition` holds, for background work (deferred writes, repairs); fails after 10 s.
private func eventually(_ what: String, _ condition: () async throws -> Bool) async throws {
    for _ in 0..<1000 {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("timed out waiting until \(what)")
}

@Suite struct SizeDifferentiatedBlobStoreTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await check.run(on: SizeDifferentiatedBlobStore(
            limited: [.init(maxSize: 1000, store: lru()), .init(maxSize: 64 << 10, store: lru())], fallback: lru()))
    }

    @Test func routesBySizeStrictlyBelowTheLimit() async throws {
        let small = lru(), medium = lru(), large = lru()
        let store = SizeDifferentiatedBlobStore(
            limited: [.init(maxSize: 1000, store: small), .init(maxSize: 5000, store: medium)], fallback: large)
        let blobs = [999, 1000, 4999, 5000].map { Blob.random(size: $0) }
        let results = await store.writeBatch(blobs.map { ($0.digest, $0.data) })
        #expect(results.allSatisfy { if case .success = $0 { true } else { false } })
        #expect(try await small.findMissing(blobs.map(\.digest)) == [blobs[1], blobs[2], blobs[3]].map(\.digest))
        #expect(try await medium.findMissing(blobs.map(\.digest)) == [blobs[0], blobs[3]].map(\.digest))
        #expect(try await large.findMissing(blobs.map(\.digest)) == [blobs[0], blobs[1], blobs[2]].map(\.digest))
        #expect(try await store.findMissing(blobs.map(\.digest)).isEmpty)
    }
}

@Suite struct ShardedBlobStoreTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await check.run(on: ShardedBlobStore(shards: ["a", "b", "c"].map { .init(name: $0, store: lru()) }))
    }

    @Test func eachBlobIsOnTheShardBuildGridPicks() async throws {
        let names = ["shard-a", "shard-b", "shard-c"]
        let stores = names.map { _ in lru() }
        let store = ShardedBlobStore(shards: zip(names, stores).map { .init(name: $0, store: $1) })
        let blobs = (0..<60).map { _ in Blob.random(size: 100) }
        _ = await store.writeBatch(blobs.map { ($0.digest, $0.data) })
        var perShard = [0, 0, 0]
        for blob in blobs {
            let hashes = names.map { murmurHash3x86_32(Array("\($0)\t\(blob.digest.hash)".utf8)) }
            let expected = hashes.firstIndex(of: hashes.min()!)!
            perShard[expected] += 1
            for (index, shard) in stores.enumerated() {
                #expect(try await shard.findMissing([blob.digest]).isEmpty == (index == expected))
            }
        }
        #expect(perShard.allSatisfy { $0 > 0 }, "60 blobs should reach all three shards")
    }

    @Test func aShardDownFailsOnlyItsBlobs() async throws {
        let faulty = FaultyBlobStore(lru())
        let store = ShardedBlobStore(shards: [.init(name: "up", store: lru()), .init(name: "down", store: faulty)])
        let blobs = (0..<20).map { _ in Blob.random(size: 10) }
        _ = await store.writeBatch(blobs.map { ($0.digest, $0.data) })
        faulty.failing = true
        let read = await store.readBatch(blobs.map(\.digest))
        for (blob, result) in zip(blobs, read) {
            if store.shardIndex(blob.digest) == 1 {
                try expectFailure(result, .unavailable, "reading from a shard that is down")
            } else {
                #expect((try? result.get()) == blob.data)
            }
        }
        await #expect(throws: StrataError.self) { try await store.findMissing(blobs.map(\.digest)) }
    }
}

@Suite struct WithCacheBlobStoreTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await check.run(on: WithCacheBlobStore(cache: lru(), fallback: lru()))
    }

    @Test(arguments: BlobStoreConformance.cases)
    func conformanceWithDeferredWrites(_ check: BlobStoreConformance) async throws {
        try await check.run(on: WithCacheBlobStore(cache: lru(), fallback: lru(), deferFallbackWrites: true))
    }

    @Test func readsFillTheCacheAndPresenceComesFromTheFallback() async throws {
        let cache = lru(), fallback = lru()
        let store = WithCacheBlobStore(cache: cache, fallback: fallback)
        let blob = Blob.random(size: 1000)
        try await fallback.write(blob.digest, data: blob.data)
        #expect(try await cache.findMissing([blob.digest]) == [blob.digest])
        #expect(try await store.readAll(blob.digest) == blob.data)
        #expect(try await cache.findMissing([blob.digest]).isEmpty, "a read did not fill the cache")
        // Only the fallback can promise the blob stays: a blob only in the cache is missing.
        let cachedOnly = Blob.random(size: 10)
        try await cache.write(cachedOnly.digest, data: cachedOnly.data)
        #expect(try await store.findMissing([cachedOnly.digest, blob.digest]) == [cachedOnly.digest])
    }

    @Test func largeWritesStreamToTheFallbackOnly() async throws {
        let cache = lru(), fallback = lru()
        let store = WithCacheBlobStore(cache: cache, fallback: fallback, smallBlobLimit: 1000)
        let blob = Blob.random(size: 5000)
        try await store.write(blob.digest, data: blob.data)
        #expect(try await fallback.findMissing([blob.digest]).isEmpty)
        #expect(try await cache.findMissing([blob.digest]) == [blob.digest])
        #expect(try await store.readAll(blob.digest) == blob.data)
        #expect(try await cache.findMissing([blob.digest]).isEmpty)
    }

    @Test func corruptFallbackBlobIsDataLossNotWrongBytes() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-corrupt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let fallback = DiskBlobStore(path: root, sync: false)
        let store = WithCacheBlobStore(cache: lru(), fallback: fallback)
        let blob = Blob.random(size: 100)
        try await fallback.write(blob.digest, data: blob.data)
        let file = "\(root)/cas/\(blob.digest.hash.prefix(2))/\(blob.digest.hash)_\(blob.digest.sizeBytes)"
        var corrupted = blob.data
        corrupted[0] ^= 1
        try corrupted.write(to: URL(fileURLWithPath: file))
        try await expectError(.dataLoss, "reading a blob whose fallback copy is corrupt") { _ = try await store.readAll(blob.digest) }
    }

    @Test func deferredWritesAreNeverReportedMissing() async throws {
        let fallback = FaultyBlobStore(lru())
        let store = WithCacheBlobStore(cache: lru(), fallback: fallback, deferFallbackWrites: true)
        fallback.failing = true  // the fallback is down: writes are queued and retried
        let blobs = (0..<10).map { _ in Blob.random(size: 100) }
        for blob in blobs.prefix(5) { try await store.write(blob.digest, data: blob.data) }
        let batch = await store.writeBatch(blobs.suffix(5).map { ($0.digest, $0.data) })
        #expect(batch.allSatisfy { if case .success = $0 { true } else { false } })
        #expect(await store.pendingFallbackWrites() == 10)
        // findMissing must not throw away acknowledged blobs while the fallback is down... but it
        // asks the fallback, which is down: it fails rather than lying.
        await #expect(throws: StrataError.self) { try await store.findMissing(blobs.map(\.digest)) }
        fallback.failing = false
        #expect(try await store.findMissing(blobs.map(\.digest)).isEmpty)
        for blob in blobs { #expect(try await store.readAll(blob.digest) == blob.data) }
        try await eventually("the deferred writes reach the fallback") { await store.pendingFallbackWrites() == 0 }
        #expect(try await fallback.base.findMissing(blobs.map(\.digest)).isEmpty)
    }

    @Test func deferredWritesRefuseBadBlobs() async throws {
        let store = WithCacheBlobStore(cache: lru(), fallback: lru(), deferFallbackWrites: true)
        let blob = Blob.random(size: 100)
        var corrupted = blob.data
        corrupted[3] ^= 1
        try expectFailure(await store.writeBatch([(blob.digest, corrupted)])[0], .invalidArgument, "a corrupt blob in a deferred batch")
        try await expectError(.invalidArgument, "a corrupt deferred write") { try await store.write(blob.digest, data: corrupted) }
        #expect(await store.pendingFallbackWrites() == 0)
    }
}

@Suite struct ReplicatedBlobStoreTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await check.run(on: ReplicatedBlobStore(replicas: [lru(), lru(), lru()]))
    }

    @Test func missingOnlyWhenNoReplicaHasItAndRepairs() async throws {
        let first = lru(), second = lru()
        let store = ReplicatedBlobStore(replicas: [first, second])
        let onlySecond = Blob.random(size: 100), absent = Blob.random(size: 100)
        try await second.write(onlySecond.digest, data: onlySecond.data)
        #expect(try await store.findMissing([onlySecond.digest, absent.digest]) == [absent.digest])
        try await eventually("the first replica is repaired") { try await first.findMissing([onlySecond.digest]).isEmpty }
    }

    @Test func readsFallThroughAndRepair() async throws {
        let first = lru(), second = lru()
        let store = ReplicatedBlobStore(replicas: [first, second])
        let blob = Blob.random(size: 1000)
        try await second.write(blob.digest, data: blob.data)
        #expect(try await store.readAll(blob.digest) == blob.data)
        try await eventually("the first replica is repaired by a read") { try await first.findMissing([blob.digest]).isEmpty }
        let batchBlob = Blob.random(size: 10)
        try await second.write(batchBlob.digest, data: batchBlob.data)
        #expect(try await store.readBatch([batchBlob.digest])[0].get() == batchBlob.data)
        try await eventually("a batch read repairs") { try await first.findMissing([batchBlob.digest]).isEmpty }
    }

    @Test func aWriteFailsUnlessEveryReplicaHasIt() async throws {
        let down = FaultyBlobStore(lru())
        let store = ReplicatedBlobStore(replicas: [lru(), down])
        down.failing = true
        let blob = Blob.random(size: 10)
        try await expectError(.unavailable, "writing while a replica is down") { try await store.write(blob.digest, data: blob.data) }
        try expectFailure(await store.writeBatch([(blob.digest, blob.data)])[0], .unavailable, "batch-writing while a replica is down")
        // Reads still work from the replica that is up.
        let other = Blob.random(size: 10)
        try await store.replicas[0].write(other.digest, data: other.data)
        #expect(try await store.readAll(other.digest) == other.data)
    }
}
