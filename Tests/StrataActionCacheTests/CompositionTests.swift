import Foundation
import StrataAPI
import StrataActionCache
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

private func lru() -> LRUActionCache { LRUActionCache(maxEntries: 10_000) }

@Suite struct ActionCacheConformanceTests {
    static let caches: [(String, @Sendable () -> any ActionCache)] = [
        ("lru", { lru() }),
        ("write-once over lru", { WriteOnceActionCache(lru()) }),
        ("sharded", { ShardedActionCache(shards: ["a", "b", "c"].map { .init(name: $0, cache: lru()) }) }),
        ("with-cache", { WithCacheActionCache(cache: lru(), fallback: lru()) }),
        ("mirrored", { MirroredActionCache(first: lru(), second: lru()) }),
        ("completeness-checking", { CompletenessCheckingActionCache(lru(), cas: LRUBlobStore(capacityBytes: 1 << 20)) }),
    ]

    @Test(arguments: ActionCacheConformance.cases)
    func conformance(_ check: ActionCacheConformance) async throws {
        for (name, make) in Self.caches {
            // Write-once refuses the "update replaces" case by design; it has its own test.
            if name.hasPrefix("write-once") && check.name == "update replaces" { continue }
            do {
                try await check.run(on: make())
            } catch {
                Issue.record("\(name): \(error)")
            }
        }
    }
}

@Suite struct WriteOnceActionCacheTests {
    @Test func aDifferentSecondUpdateIsAlreadyExists() async throws {
        let cache = WriteOnceActionCache(lru())
        let action = Blob.random(size: 10).digest
        try await cache.update(action, ActionCacheConformance.result(stdout: "first"))
        try await cache.update(action, ActionCacheConformance.result(stdout: "first"))
        try await expectError(.alreadyExists, "a second, different update of a write-once cache") {
            try await cache.update(action, ActionCacheConformance.result(stdout: "second"))
        }
        #expect(try await cache.get(action) == ActionCacheConformance.result(stdout: "first"))
    }

    @Test func concurrentDifferentUpdatesLeaveOneWinner() async throws {
        let cache = WriteOnceActionCache(lru())
        let action = Blob.random(size: 10).digest
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<10 {
                group.addTask { (try? await cache.update(action, ActionCacheConformance.result(stdout: "\(index)"))) != nil }
            }
            return await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
        }
        #expect(outcomes == 1)
    }

    /// A refused update hands the action on like a successful one: every update finishes, and exactly
    /// those equal to each action's first result are accepted.
    @Test func manyWaitersOfSeveralActionsAllFinish() async throws {
        let cache = WriteOnceActionCache(lru())
        let actions = (0..<4).map { _ in Blob.random(size: 10).digest }
        let updates = (0..<200).map { index in (actions[index % actions.count], index % 3 == 0 ? "odd one \(index)" : "same") }
        let accepted = await withTaskGroup(of: (Digest, String)?.self) { group in
            for (action, stdout) in updates {
                group.addTask {
                    (try? await cache.update(action, ActionCacheConformance.result(stdout: stdout))) != nil ? (action, stdout) : nil
                }
            }
            return await group.reduce(into: [(Digest, String)]()) { if let update = $1 { $0.append(update) } }
        }
        var expected = 0
        for action in actions {
            let stored = try #require(try await cache.get(action))
            expected += updates.filter { $0.0 == action && ActionCacheConformance.result(stdout: $0.1) == stored }.count
        }
        #expect(accepted.count == expected)
    }
}

@Suite struct ComposedActionCacheTests {
    @Test func mirroredRepairsTheSideThatLacks() async throws {
        let first = lru(), second = lru()
        let cache = MirroredActionCache(first: first, second: second)
        let action = Blob.random(size: 10).digest
        try await second.update(action, ActionCacheConformance.result())
        #expect(try await cache.get(action) != nil)
        #expect(try await first.get(action) != nil, "the first cache was not repaired")
    }

    @Test func withCacheFillsTheLocalTier() async throws {
        let local = lru(), shared = lru()
        let cache = WithCacheActionCache(cache: local, fallback: shared)
        let action = Blob.random(size: 10).digest
        try await shared.update(action, ActionCacheConformance.result())
        #expect(try await cache.get(action) != nil)
        #expect(try await local.get(action) != nil)
        let updated = Blob.random(size: 10).digest
        try await cache.update(updated, ActionCacheConformance.result())
        #expect(try await shared.get(updated) != nil, "an update did not reach the shared tier")
    }

    @Test func shardedPicksTheSameShardAsStorage() async throws {
        let names = ["x", "y", "z"]
        let caches = names.map { _ in lru() }
        let cache = ShardedActionCache(shards: zip(names, caches).map { .init(name: $0, cache: $1) })
        let storage = ShardedBlobStore(shards: names.map { .init(name: $0, store: LRUBlobStore(capacityBytes: 1)) })
        for _ in 0..<30 {
            let action = Blob.random(size: 10).digest
            try await cache.update(action, ActionCacheConformance.result())
            let expected = storage.shardIndex(action)
            for (index, shard) in caches.enumerated() {
                #expect((try await shard.get(action) != nil) == (index == expected))
            }
        }
    }
}

@Suite struct CompletenessCheckingTests {
    typealias Directory = Build_Bazel_Remote_Execution_V2_Directory
    typealias Tree = Build_Bazel_Remote_Execution_V2_Tree

    func proto(_ digest: Digest) -> Build_Bazel_Remote_Execution_V2_Digest {
        .with { $0.hash = digest.hash; $0.sizeBytes = digest.sizeBytes }
    }

    func fileNode(_ name: String, _ blob: Blob) -> Build_Bazel_Remote_Execution_V2_FileNode {
        .with { $0.name = name; $0.digest = proto(blob.digest) }
    }

    /// A result with an output file, stdout, a Tree output and a root-directory output two levels deep;
    /// returns it with every blob it references.
    func completeResult() throws -> (ActionResult, [Blob]) {
        let file = Blob.random(size: 100), stdout = Blob.random(size: 20)
        let treeFile = Blob.random(size: 30), deepFile = Blob.random(size: 40), rootFile = Blob.random(size: 50)
        let leaf = Directory.with { $0.files = [fileNode("deep", deepFile)] }
        let leafBlob = Blob(try leaf.serializedData())
        let root = Directory.with {
            $0.files = [fileNode("top", rootFile)]
            $0.directories = [.with { $0.name = "sub"; $0.digest = proto(leafBlob.digest) }]
        }
        let rootBlob = Blob(try root.serializedData())
        let tree = Tree.with { $0.root = .with { $0.files = [fileNode("t", treeFile)] } }
        let treeBlob = Blob(try tree.serializedData())
        let result = ActionResult.with {
            $0.outputFiles = [.with { $0.path = "out/file"; $0.digest = proto(file.digest) }]
            $0.stdoutDigest = proto(stdout.digest)
            $0.outputDirectories = [
                .with { $0.path = "out/tree"; $0.treeDigest = proto(treeBlob.digest) },
                .with { $0.path = "out/root"; $0.rootDirectoryDigest = proto(rootBlob.digest) },
            ]
        }
        return (result, [file, stdout, treeFile, deepFile, rootFile, leafBlob, rootBlob, treeBlob])
    }

    @Test func completeEntriesAreServed() async throws {
        let cas = FaultyBlobStore(LRUBlobStore(capacityBytes: 1 << 20))
        let cache = CompletenessCheckingActionCache(lru(), cas: cas)
        let (result, blobs) = try completeResult()
        _ = await cas.writeBatch(blobs.map { ($0.digest, $0.data) })
        let action = Blob.random(size: 10).digest
        try await cache.update(action, result)
        #expect(try await cache.get(action) == result)
        // Batched: one findMissing for the first level, one for the tree's files, one per directory level.
        #expect(cas.calls("findMissing") == 4)
    }

    @Test(arguments: 0..<8)
    func anyMissingBlobMakesTheEntryAbsentAndDropsIt(_ missingIndex: Int) async throws {
        let store = LRUBlobStore(capacityBytes: 1 << 20)
        let base = lru()
        let cache = CompletenessCheckingActionCache(base, cas: store)
        let (result, blobs) = try completeResult()
        _ = await store.writeBatch(blobs.map { ($0.digest, $0.data) })
        try await store.delete([blobs[missingIndex].digest])
        let action = Blob.random(size: 10).digest
        try await cache.update(action, result)
        #expect(try await cache.get(action) == nil, "an entry missing blob \(missingIndex) was served")
        #expect(try await base.get(action) == nil, "the stale entry was not dropped")
    }

    @Test func aCASOutageIsAnErrorNotADrop() async throws {
        let cas = FaultyBlobStore(LRUBlobStore(capacityBytes: 1 << 20))
        let base = lru()
        let cache = CompletenessCheckingActionCache(base, cas: cas)
        let action = Blob.random(size: 10).digest
        let (result, blobs) = try completeResult()
        _ = await cas.writeBatch(blobs.map { ($0.digest, $0.data) })
        try await cache.update(action, result)
        cas.failing = true
        try await expectError(.unavailable, "checking completeness while the CAS is down") { _ = try await cache.get(action) }
        cas.failing = false
        #expect(try await cache.get(action) == result, "an outage dropped a good entry")
    }
}
