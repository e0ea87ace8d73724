import StrataActionCache
import StrataCore
import StrataTestSupport
import Testing

@Suite struct ActionCacheTests {
    func result(exitCode: Int32) -> ActionResult {
        var result = ActionResult()
        result.exitCode = exitCode
        result.stdoutDigest.hash = Digest.emptySHA256.hash
        return result
    }

    @Test func lruKeepsAtMostMaxEntries() async throws {
        let cache = LRUActionCache(maxEntries: 2)
        let actions = (0..<3).map { _ in Blob.random(size: 10).digest }
        for action in actions { try await cache.update(action, result(exitCode: 0)) }
        #expect(cache.count == 2)
        #expect(try await cache.get(actions[0]) == nil)
        #expect(try await cache.get(actions[2]) == result(exitCode: 0))
    }

    @Test func sameHashOtherSizeIsAnotherKey() async throws {
        let cache = LRUActionCache(maxEntries: 10)
        let action = Blob.random(size: 10).digest
        try await cache.update(action, result(exitCode: 0))
        #expect(try await cache.get(try Digest(hash: action.hash, sizeBytes: 11)) == nil)
    }

    @Test func refusedUpdatesArePermissionDenied() async throws {
        let cache = UpdatePolicyActionCache(LRUActionCache(maxEntries: 10), allowUpdates: false, cacheFailedActions: true)
        #expect(!cache.allowsUpdates)
        try await expectError(.permissionDenied, "updating a cache with allow-updates: false") {
            try await cache.update(Blob.random(size: 1).digest, result(exitCode: 0))
        }
    }

    @Test func failedActionsAreNotStoredWhenAsked() async throws {
        let cache = UpdatePolicyActionCache(LRUActionCache(maxEntries: 10), allowUpdates: true, cacheFailedActions: false)
        let failed = Blob.random(size: 1).digest
        let passed = Blob.random(size: 2).digest
        try await cache.update(failed, result(exitCode: 1))
        try await cache.update(passed, result(exitCode: 0))
        #expect(try await cache.get(failed) == nil)
        #expect(try await cache.get(passed) != nil)
    }
}
