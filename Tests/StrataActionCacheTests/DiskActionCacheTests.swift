import Foundation
import StrataActionCache
import StrataCore
import StrataTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `!disk-action-cache`: the contract, results across a restart, the bound, and damaged files.
@Suite struct DiskActionCacheTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-disk-ac-\(UUID().uuidString)").path

    func cache(maxBytes: Int64 = 64 << 20, maxEntries: Int? = nil) -> DiskActionCache {
        DiskActionCache(path: scratch, limits: .init(maxBytes: maxBytes, maxEntries: maxEntries))
    }

    func files() -> [String] {
        let names = (try? FileManager.default.subpathsOfDirectory(atPath: scratch)) ?? []
        return names.filter { $0.count > 3 && !$0.hasPrefix("tmp") }.sorted()
    }

    @Test(arguments: ActionCacheConformance.cases)
    func conformance(_ check: ActionCacheConformance) async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try await check.run(on: cache())
    }

    @Test func resultsSurviveARestart() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let action = Blob.random(size: 100).digest
        try await cache().update(action, ActionCacheConformance.result(stdout: "kept"))
        let reopened = cache()
        #expect(try await reopened.get(action) == ActionCacheConformance.result(stdout: "kept"))
        #expect(reopened.usage?.entries == 1)
    }

    @Test func creatingTheCacheTouchesNothing() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let cache = cache()
        #expect(!FileManager.default.fileExists(atPath: scratch))
        #expect(try await cache.get(Blob.random(size: 10).digest) == nil)
        #expect(!FileManager.default.fileExists(atPath: scratch), "a read created the folder")
        try await cache.update(Blob.random(size: 10).digest, ActionCacheConformance.result())
        #expect(files().count == 1)
    }

    @Test func maxEntriesEvictsTheLeastRecentlyUsed() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let cache = cache(maxEntries: 3)
        let actions = (0..<5).map { _ in Blob.random(size: 10).digest }
        for action in actions.prefix(3) { try await cache.update(action, ActionCacheConformance.result()) }
        _ = try await cache.get(actions[0])
        for action in actions.suffix(2) { try await cache.update(action, ActionCacheConformance.result()) }
        #expect(files().count == 3)
        #expect(try await cache.get(actions[0]) != nil, "the entry read last was evicted")
        #expect(try await cache.get(actions[1]) == nil)
        #expect(try await cache.get(actions[2]) == nil)
        #expect(try await cache.get(actions[4]) != nil)
    }

    @Test func maxSizeBoundsTheBytesOnDisk() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let maxBytes: Int64 = 64 << 10
        let cache = cache(maxBytes: maxBytes)
        for index in 0..<200 {
            try await cache.update(Blob.random(size: 10).digest, ActionCacheConformance.result(stdout: String(repeating: "x", count: 1000 + index)))
        }
        // Counted in whole 4 KiB blocks: 16 results of about 1 KiB fit in 64 KiB, not 60.
        let sizes = try files().map { name in
            (try FileManager.default.attributesOfItem(atPath: "\(scratch)/\(name)")[.size] as? Int) ?? 0
        }
        let blocks = sizes.reduce(Int64(0)) { $0 + DiskActionCache.cost(ofFileSize: $1) }
        #expect(sizes.count == 16, "\(sizes.count) results kept")
        #expect(blocks <= maxBytes, "\(blocks) bytes of blocks on disk")
        #expect(cache.usage?.bytes == blocks)
        try await expectError(.resourceExhausted, "a result larger than max-size") {
            try await cache.update(Blob.random(size: 10).digest, ActionCacheConformance.result(stdout: String(repeating: "y", count: Int(maxBytes))))
        }
    }

    @Test func aRestartKeepsTheBoundAndTheRecency() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let actions = (0..<4).map { _ in Blob.random(size: 10).digest }
        let first = cache(maxEntries: 4)
        for action in actions { try await first.update(action, ActionCacheConformance.result()) }
        // File times advance by clock ticks (up to 10 ms): read the first entry well after the writes.
        try await Task.sleep(for: .milliseconds(50))
        _ = try await first.get(actions[0])
        let reopened = cache(maxEntries: 2)
        #expect(try await reopened.get(actions[0]) != nil, "the most recently read entry was evicted at start")
        #expect(reopened.usage?.entries == 2)
        #expect(files().count == 2)
    }

    @Test func aDamagedFileIsAMissAndIsRemoved() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let cache = cache()
        let action = Blob.random(size: 100).digest
        try await cache.update(action, ActionCacheConformance.result(stdout: "hello world"))
        let path = "\(scratch)/\(try #require(files().first))"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - 3] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: path))
        #expect(try await cache.get(action) == nil)
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(cache.usage?.entries == 0)
    }

    @Test func aFileUnderAnotherActionsNameIsNotServed() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let cache = cache()
        let stored = Blob.random(size: 100).digest
        let other = Blob.random(size: 100).digest
        try await cache.update(stored, ActionCacheConformance.result(stdout: "stored"))
        try await cache.update(other, ActionCacheConformance.result(stdout: "other"))
        let storedPath = "\(scratch)/\(stored.hash.prefix(2))/\(stored.hash)_100_sha256"
        let otherPath = "\(scratch)/\(other.hash.prefix(2))/\(other.hash)_100_sha256"
        try FileManager.default.removeItem(atPath: otherPath)
        try FileManager.default.copyItem(atPath: storedPath, toPath: otherPath)
        #expect(try await cache.get(other) == nil)
        #expect(try await cache.get(stored) == ActionCacheConformance.result(stdout: "stored"))
    }

    @Test func aPathUnderARegularFileSaysSo() async throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        _ = FileManager.default.createFile(atPath: "\(scratch)/file", contents: Data("x".utf8))
        let cache = DiskActionCache(path: "\(scratch)/file/ac", limits: .init(maxBytes: 1 << 20))
        do {
            try await cache.update(Blob.random(size: 10).digest, ActionCacheConformance.result())
            Issue.record("an update under a regular file succeeded")
        } catch let error as StrataError {
            #expect(error.message.contains("\(scratch)/file is a regular file, not a directory"), "\(error)")
        }
    }
}
