import Foundation
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `!disk-storage` with `max-size`: refusing past the budget, or evicting least recently used blobs.
@Suite struct DiskBudgetTests {
    func withRoot<T>(_ body: (String) async throws -> T) async throws -> T {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-budget-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        return try await body(root)
    }

    @Test(arguments: BlobStoreConformance.cases)
    func conformanceWithEviction(_ check: BlobStoreConformance) async throws {
        try await withRoot { root in
            try await check.run(on: DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 1 << 30, evictLeastRecentlyUsed: true)))
        }
    }

    @Test func refusesWritesPastTheBudgetWithResourceExhausted() async throws {
        try await withRoot { root in
            let store = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 3000))
            let blobs = (0..<2).map { _ in Blob.random(size: 1000) }
            for blob in blobs { try await store.write(blob.digest, data: blob.data) }
            let big = Blob.random(size: 1500)
            do {
                try await store.write(big.digest, data: big.data)
                Issue.record("a write past the budget succeeded")
            } catch let error as StrataError {
                #expect(error.code == .resourceExhausted)
                #expect(error.message.contains("max-size 3000"), "\(error)")
            }
            #expect(try await store.findMissing([big.digest]) == [big.digest])
            #expect(store.storedBytes == 2000)
            // Room again once a blob is deleted.
            try await store.delete([blobs[0].digest])
            try await store.write(big.digest, data: big.data)
            #expect(store.storedBytes == 2500)
            // Rewriting a stored blob costs nothing.
            try await store.write(big.digest, data: big.data)
            #expect(store.storedBytes == 2500)
            // Larger than the whole budget: refused whatever is stored.
            let huge = Blob.random(size: 3001)
            try await expectError(.resourceExhausted, "a blob larger than the budget") {
                try await store.write(huge.digest, data: huge.data)
            }
        }
    }

    @Test func evictsLeastRecentlyUsedWhenConfiguredAsACache() async throws {
        try await withRoot { root in
            let store = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 3000, evictLeastRecentlyUsed: true))
            let blobs = (0..<3).map { _ in Blob.random(size: 1000) }
            for blob in blobs { try await store.write(blob.digest, data: blob.data) }
            // A read and a FindMissingBlobs hit make the first two recently used; the third is now the oldest.
            _ = try await store.readAll(blobs[0].digest)
            #expect(try await store.findMissing([blobs[1].digest]).isEmpty)
            let newcomer = Blob.random(size: 1000)
            try await store.write(newcomer.digest, data: newcomer.data)
            #expect(try await store.findMissing(blobs.map(\.digest) + [newcomer.digest]) == [blobs[2].digest])
            #expect(store.storedBytes == 3000)
            let files = try FileManager.default.subpathsOfDirectory(atPath: "\(root)/cas").filter { $0.contains("_") }
            #expect(files.count == 3)
        }
    }

    @Test func countsExistingFilesAtStartAndOrdersThemByTime() async throws {
        try await withRoot { root in
            let plain = DiskBlobStore(path: root, sync: false)
            let blobs = (0..<3).map { _ in Blob.random(size: 1000) }
            for blob in blobs { try await plain.write(blob.digest, data: blob.data) }
            // blobs[1] is the oldest on disk.
            let path = "\(root)/cas/\(blobs[1].digest.hash.prefix(2))/\(blobs[1].digest.hash)_1000"
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-3600)], ofItemAtPath: path)
            var times = [timespec(tv_sec: Int(Date().timeIntervalSince1970) - 3600, tv_nsec: 0), timespec(tv_sec: Int(Date().timeIntervalSince1970) - 3600, tv_nsec: 0)]
            #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)

            let budgeted = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 3500, evictLeastRecentlyUsed: true))
            try await budgeted.prepare()
            #expect(budgeted.storedBytes == 3000)
            let newcomer = Blob.random(size: 1000)
            try await budgeted.write(newcomer.digest, data: newcomer.data)
            #expect(try await budgeted.findMissing(blobs.map(\.digest)) == [blobs[1].digest])
        }
    }

    /// Writes and FindMissingBlobs of blobs racing the eviction that chose them. What holds: a write
    /// answered OK leaves its blob stored, and so does a FindMissingBlobs answered "present": an eviction
    /// already under way never deletes it, a later one only once every less recently used blob is gone.
    /// Here the budget holds the big blob and every blob written or found again, so none of those may
    /// be missing at the end (before the fix, a write or lookup seeing a victim's file before its
    /// unlink answered OK and the file was then deleted). Prepared, the store answers from its index.
    @Test(arguments: [false, true]) func evictionNeverDeletesABlobItAcknowledged(prepared: Bool) async throws {
        for _ in 0..<20 {
            try await withRoot { root in
                let size = 100
                let count = 200
                let store = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: Int64(size * count), evictLeastRecentlyUsed: true))
                if prepared { try await store.prepare() }
                let old = (0..<count).map { _ in Blob.random(size: size) }
                for blob in old { try await store.write(blob.digest, data: blob.data) }
                // Evicts the least recently used half, old[0..<100], while half of those are written again
                // and the other half looked up.
                let big = Blob.random(size: size * count / 2)
                let rewritten = Array(old[0..<(count / 4)])
                let lookedUp = Array(old[(count / 4)..<(count / 2)])
                // The lookups that answered "present".
                let reportedPresent = try await withThrowingTaskGroup(of: Digest?.self) { group in
                    group.addTask { try await store.write(big.digest, data: big.data); return nil }
                    for (blob, other) in zip(rewritten, lookedUp) {
                        group.addTask { try await store.write(blob.digest, data: blob.data); return nil }
                        group.addTask { try await store.findMissing([other.digest]).isEmpty ? other.digest : nil }
                    }
                    var present: [Digest] = []
                    for try await digest in group { if let digest { present.append(digest) } }
                    return present
                }
                let acknowledged = rewritten.map(\.digest) + [big.digest] + reportedPresent
                let missing = try await store.findMissing(acknowledged)
                #expect(missing.isEmpty, "\(missing.count) acknowledged blobs were deleted")
                for blob in rewritten.prefix(10) { #expect(try await store.readAll(blob.digest) == blob.data) }
                #expect(store.storedBytes! <= Int64(size * count))
            }
        }
    }

    @Test func uncountsFilesAnotherProcessDeleted() async throws {
        try await withRoot { root in
            let store = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 2000))
            let blobs = (0..<2).map { _ in Blob.random(size: 1000) }
            for blob in blobs { try await store.write(blob.digest, data: blob.data) }
            // `strata cleanup` in another process deletes through its own store.
            try await DiskBlobStore(path: root, sync: false).delete([blobs[0].digest])
            let next = Blob.random(size: 1000)
            // A lookup that finds the file gone uncounts it at once (a refused write would recount).
            #expect(try await store.findMissing([blobs[0].digest]) == [blobs[0].digest])
            #expect(store.storedBytes == 1000)
            try await store.write(next.digest, data: next.data)
            #expect(store.storedBytes == 2000)
        }
    }

    /// SHA-256 blobs stay at `cas/{ab}/{hash}_{size}`, the others go to `cas/{function}/{ab}/…`, and the
    /// listing (janitor, cleanup, scrub) and the budget's count at start read every function's back.
    @Test func listsAndCountsBlobsOfEveryFunction() async throws {
        try await withRoot { root in
            let store = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 1 << 20))
            try await store.prepare()
            let blobs = DigestFunction.supported.flatMap { function in (0..<2).map { _ in Blob.random(size: 10, function: function) } }
            for blob in blobs { try await store.write(blob.digest, data: blob.data) }
            for blob in blobs {
                let hash = blob.digest.hash
                let folder = blob.digest.function == .sha256 ? "cas" : "cas/\(blob.digest.function.name)"
                #expect(FileManager.default.fileExists(atPath: "\(root)/\(folder)/\(hash.prefix(2))/\(hash)_10"))
            }
            var listed: [StoredBlob] = []
            try await store.forEachBlobPage(pageSize: 3) { listed += $0 }
            #expect(listed.count == blobs.count && Set(listed.map(\.digest)) == Set(blobs.map(\.digest)))
            let restarted = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 1 << 20))
            try await restarted.prepare()
            #expect(restarted.storedBytes == Int64(10 * blobs.count))
            #expect(DiskBlobStore.storedBytes(path: root) == Int64(10 * blobs.count))
        }
    }

    @Test func listsItsBlobs() async throws {
        try await withRoot { root in
            let store = DiskBlobStore(path: root, sync: false)
            let blobs = (0..<7).map { _ in Blob.random(size: 10) }
            for blob in blobs { try await store.write(blob.digest, data: blob.data) }
            var listed: [StoredBlob] = []
            try await store.forEachBlobPage(pageSize: 3) { page in
                #expect(page.count <= 3)
                listed += page
            }
            #expect(Set(listed.map(\.digest)) == Set(blobs.map(\.digest)))
            #expect(listed.allSatisfy { abs($0.modified.timeIntervalSinceNow) < 600 })
        }
    }
}
