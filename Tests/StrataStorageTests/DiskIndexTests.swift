import Foundation
import StrataCore
@testable import StrataStorage
import StrataTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `!disk-storage` once prepared (`strata serve`) answers from its in-memory index (DiskBlobIndex),
/// which the scan at start-up rebuilds from the files: the files are the truth.
@Suite struct DiskIndexTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-disk-index-\(UUID().uuidString)").path

    func file(_ digest: Digest, compressed: Bool = false) -> String {
        let folder = digest.function == .sha256 ? "cas" : "cas/\(digest.function.name)"
        return "\(root)/\(folder)/\(digest.hash.prefix(2))/\(digest.hash)_\(digest.sizeBytes)\(compressed ? ".zst" : "")"
    }

    func prepared(_ store: DiskBlobStore) async throws -> DiskBlobStore {
        try await store.prepare()
        return store
    }

    @Test(arguments: BlobStoreConformance.cases)
    func conformanceWhenPrepared(_ check: BlobStoreConformance) async throws {
        let configurations: [(String) -> DiskBlobStore] = [
            { DiskBlobStore(path: $0, sync: false) },
            { DiskBlobStore(path: $0, sync: false, budget: .init(maxBytes: 1 << 30, evictLeastRecentlyUsed: true)) },
            { DiskBlobStore(path: $0, sync: false, budget: .init(maxBytes: 1 << 30), compressionLevel: 1) },
        ]
        for (number, configure) in configurations.enumerated() {
            let folder = "\(root)-\(number)"
            defer { try? FileManager.default.removeItem(atPath: folder) }
            try await check.run(on: prepared(configure(folder)))
        }
    }

    /// A crash leaves files the index of the dead process never recorded (written by it, or by another
    /// process) and index entries whose files are gone; a store started on the folder knows exactly
    /// the files: every function's namespace, plain and `.zst` files, nothing else.
    @Test func theIndexAgreesWithTheFolderAfterACrash() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let crashed = try await prepared(DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 1 << 20)))
        let indexed = (0..<3).map { _ in Blob.random(size: 100) }
        for blob in indexed { try await crashed.write(blob.digest, data: blob.data) }
        // Entries without files: recorded, then their files lost with the crash.
        let lost = (0..<2).map { _ in Blob.random(size: 100) }
        for blob in lost {
            try await crashed.write(blob.digest, data: blob.data)
            #expect(unlink(file(blob.digest)) == 0)
        }
        // Files without entries: written by another process, plain and compressed, in other namespaces.
        let unindexed = [Blob.random(size: 200), Blob.random(size: 30, function: .blake3), Blob.random(size: 40, function: .sha512)]
        let other = DiskBlobStore(path: root, sync: false)
        for blob in unindexed { try await other.write(blob.digest, data: blob.data) }
        let compressed = Blob(Data(repeating: 7, count: 5000))
        try await DiskBlobStore(path: root, sync: false, compressionLevel: 3).write(compressed.digest, data: compressed.data)
        let compressedBytes = Int64(try #require(FileManager.default.attributesOfItem(atPath: file(compressed.digest, compressed: true))[.size] as? Int))
        // What the scan must skip: a half-written temporary file, a name of no blob, a folder named like
        // one, a size written with leading zeros (no read would open that name).
        _ = FileManager.default.createFile(atPath: "\(root)/tmp/half-written", contents: Data([1]))
        _ = FileManager.default.createFile(atPath: "\(root)/cas/ab/not-a-blob_12", contents: Data([1]))
        let folderLikeABlob = Blob.random(size: 5)
        try FileManager.default.createDirectory(atPath: file(folderLikeABlob.digest), withIntermediateDirectories: true)
        let paddedSize = Blob.random(size: 7)
        try paddedSize.data.write(to: URL(fileURLWithPath: file(paddedSize.digest).replacingOccurrences(of: "_7", with: "_007")))
        #expect(try await crashed.findMissing(unindexed.map(\.digest)) == unindexed.map(\.digest), "the live index knows only its own writes")

        let restarted = try await prepared(DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 1 << 20, evictLeastRecentlyUsed: true)))
        let stored = indexed + unindexed + [compressed]
        #expect(try await restarted.findMissing((stored + lost + [folderLikeABlob, paddedSize]).map(\.digest)) == (lost + [folderLikeABlob, paddedSize]).map(\.digest))
        #expect(restarted.indexState.blobs == stored.count)
        #expect(restarted.storedBytes == Int64(300 + 270) + compressedBytes)
        for blob in stored { #expect(try await restarted.readAll(blob.digest) == blob.data) }
        // The same without a budget, which `stat`s no plain file.
        let unbudgeted = try await prepared(DiskBlobStore(path: root, sync: false))
        #expect(try await unbudgeted.findMissing((stored + lost).map(\.digest)) == lost.map(\.digest))
    }

    /// Decided behaviour when another process deletes a file under a live server: FindMissingBlobs
    /// answers from the index (so it still reports the blob), the first read answers NOT_FOUND and
    /// forgets it, and from then on it is missing; a write of it is never acknowledged without its
    /// file (one `stat` confirms an index hit before a write is skipped).
    @Test func aFileDeletedUnderALiveServerIsForgottenAtItsFirstReadAndWrittenAgain() async throws {
        for budget in [nil, DiskBlobStore.Budget(maxBytes: 1 << 20, evictLeastRecentlyUsed: true)] {
            let root = self.root + "-\(budget == nil ? "unbudgeted" : "budgeted")"
            defer { try? FileManager.default.removeItem(atPath: root) }
            let store = try await prepared(DiskBlobStore(path: root, sync: false, budget: budget))
            let (read, rewritten, batched) = (Blob.random(size: 100), Blob.random(size: 100), Blob.random(size: 100))
            for blob in [read, rewritten, batched] { try await store.write(blob.digest, data: blob.data) }
            try await DiskBlobStore(path: root, sync: false).delete([read, rewritten, batched].map(\.digest))
            // Answered from memory: the index has not seen the delete.
            #expect(try await store.findMissing([read.digest]).isEmpty)
            try await expectError(.notFound, "a read of a deleted file") { _ = try await store.readAll(read.digest) }
            #expect(try await store.findMissing([read.digest]) == [read.digest])
            try await store.write(rewritten.digest, data: rewritten.data)
            #expect(try await store.readAll(rewritten.digest) == rewritten.data)
            #expect(try await store.writeBatch([(batched.digest, batched.data)]).allSatisfy { (try? $0.get()) != nil })
            #expect(try await store.readAll(batched.digest) == batched.data)
            if budget != nil { #expect(store.storedBytes == 200) }
        }
    }

    /// The packed index against `LRUDictionary` as the model: the same blobs, bytes and eviction order
    /// through inserts, replacements, removals (which move the last entry into the hole) and growth.
    @Test func theIndexKeepsExactRecencyOrderLikeTheLRUDictionary() {
        var index = DiskBlobIndex()
        var model = LRUDictionary<Digest, Int64>(capacity: .max)
        var generator = SplitMix(seed: 16)
        let digests = (0..<600).map { number -> Digest in
            let function: DigestFunction = number % 7 == 0 ? .sha512 : (number % 5 == 0 ? .blake3 : .sha256)
            var bytes = [UInt8](repeating: 0, count: function.hexLength / 2)
            for position in bytes.indices { bytes[position] = UInt8(truncatingIfNeeded: generator.next()) }
            // Some share their first word, to make probe sequences collide.
            if number % 3 == 0 { for position in 0..<8 { bytes[position] = 0xab } }
            return try! Digest(hash: bytes.hexString, sizeBytes: Int64(number % 50), function: function)
        }
        for step in 0..<20_000 {
            let digest = digests[Int(generator.next() % UInt64(digests.count))]
            switch generator.next() % 10 {
            case 0...3:
                let bytes = Int64(generator.next() % 1000)
                index.insert(digest, storedBytes: bytes)
                model.insert(digest, bytes, cost: bytes)
            case 4...5:
                #expect(index.remove(digest) == (model.remove(digest) != nil), "step \(step)")
            case 6...7:
                #expect(index.touch(digest) == model.touch(digest), "step \(step)")
            default:
                #expect(index.removeLeastRecent() == model.removeLeastRecent()?.key, "step \(step)")
            }
            #expect(index.count == model.count && index.totalBytes == model.totalCost, "step \(step)")
        }
        for digest in digests { #expect(index.contains(digest) == model.contains(digest)) }
        while let oldest = model.removeLeastRecent() { #expect(index.removeLeastRecent() == oldest.key) }
        #expect(index.count == 0 && index.totalBytes == 0)
    }
}

/// A seeded generator, so a failure repeats.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
