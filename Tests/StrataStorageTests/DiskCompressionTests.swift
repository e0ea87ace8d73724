import Foundation
import StrataCompression
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

/// `!disk-storage` with `compression: zstd`: blobs as `.zst` files, either kind readable whatever the
/// setting, a budget counting bytes on disk, damaged compressed copies never served.
@Suite struct DiskCompressionTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-disk-zstd-\(UUID().uuidString)").path

    func file(_ digest: Digest, compressed: Bool) -> String {
        "\(root)/cas/\(digest.hash.prefix(2))/\(digest.hash)_\(digest.sizeBytes)\(compressed ? ".zst" : "")"
    }

    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await check.run(on: DiskBlobStore(path: root, compressionLevel: 3))
    }

    @Test func conformanceWithABudget() async throws {
        for check in BlobStoreConformance.cases {
            let folder = root + "-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: folder) }
            try await check.run(on: DiskBlobStore(path: folder, budget: .init(maxBytes: 1 << 30), compressionLevel: 1))
        }
    }

    @Test func storesZstdFilesAndReadsRangesAndWholeBlobs() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = DiskBlobStore(path: root, sync: false, compressionLevel: 3)
        let blob = compressibleBlob(size: (3 << 20) + 77)
        try await store.write(blob.digest, data: blob.data)
        #expect(!FileManager.default.fileExists(atPath: file(blob.digest, compressed: false)))
        let size = try FileManager.default.attributesOfItem(atPath: file(blob.digest, compressed: true))[.size] as! Int
        #expect(size < blob.data.count / 3)
        #expect(try await store.readAll(blob.digest) == blob.data)
        for (offset, limit) in [(0, Int64(10)), (1 << 20, nil), (Int64(blob.data.count) - 5, nil), (12345, Int64(2 << 20))] as [(Int64, Int64?)] {
            let read = try await store.read(blob.digest, offset: offset, limit: limit).collect(limit: 1 << 30)
            let end = limit.map { min(Int64(blob.data.count), offset + $0) } ?? Int64(blob.data.count)
            #expect(read == blob.data[Int(offset)..<Int(end)])
        }
        #expect(try await store.readBatch([blob.digest])[0].get() == blob.data)
        // The stored frame as it is, for compressed-blobs readers.
        let frame = try await #require(try await store.readZstd(blob.digest)).collect(limit: 1 << 30)
        #expect(frame.count == size)
        #expect(try await store.findMissing([blob.digest]).isEmpty)
        try await store.delete([blob.digest])
        #expect(!FileManager.default.fileExists(atPath: file(blob.digest, compressed: true)))
        #expect(try await store.findMissing([blob.digest]) == [blob.digest])
    }

    @Test func switchingCompressionOnOrOffKeepsEveryBlobReadable() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let plain = compressibleBlob(size: 100_000, seed: 1), packed = compressibleBlob(size: 100_000, seed: 2)
        try await DiskBlobStore(path: root, sync: false).write(plain.digest, data: plain.data)
        let on = DiskBlobStore(path: root, sync: false, compressionLevel: 5)
        try await on.write(packed.digest, data: packed.data)
        // Already stored uncompressed: not stored again.
        try await on.write(plain.digest, data: plain.data)
        #expect(!FileManager.default.fileExists(atPath: file(plain.digest, compressed: true)))
        #expect(try await on.readZstd(plain.digest) == nil)
        let off = DiskBlobStore(path: root, sync: false)
        for store in [on, off] {
            #expect(try await store.findMissing([plain.digest, packed.digest]).isEmpty)
            #expect(try await store.readAll(plain.digest) == plain.data)
            #expect(try await store.readAll(packed.digest) == packed.data)
            #expect(try await store.readBatch([plain.digest, packed.digest]).map { try $0.get() } == [plain.data, packed.data])
        }
        var listed: [Digest] = []
        try await off.forEachBlobPage(pageSize: 10) { listed += $0.map(\.digest) }
        #expect(Set(listed) == [plain.digest, packed.digest])
    }

    @Test func aBudgetCountsTheBytesOnDisk() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 1 << 20, evictLeastRecentlyUsed: true), compressionLevel: 3)
        try await store.prepare()
        // Ten blobs of 400 KiB each, four times the budget uncompressed, fit compressed.
        let blobs = (0..<10).map { compressibleBlob(size: 400 << 10, seed: UInt64($0)) }
        for blob in blobs { try await store.write(blob.digest, data: blob.data) }
        #expect(try await store.findMissing(blobs.map(\.digest)).isEmpty)
        let onDisk = try blobs.reduce(Int64(0)) {
            $0 + Int64(try FileManager.default.attributesOfItem(atPath: file($1.digest, compressed: true))[.size] as! Int)
        }
        #expect(store.storedBytes == onDisk)
        // A fresh count from the folder agrees.
        #expect(DiskBlobStore.storedBytes(path: root) == onDisk)
    }

    @Test func aDamagedCompressedCopyIsDataLossAndTheVerifyingStoreRemovesIt() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let disk = DiskBlobStore(path: root, sync: false, compressionLevel: 3)
        let store = VerifyingBlobStore(disk, name: "disk storage \(root)")
        for damage in ["flip", "truncate", "append"] {
            let blob = compressibleBlob(size: 300_000, seed: UInt64(damage.count))
            try await store.write(blob.digest, data: blob.data)
            let path = file(blob.digest, compressed: true)
            var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            switch damage {
            case "flip": bytes[bytes.count / 2] ^= 0x10
            case "truncate": bytes.removeLast(7)
            default: bytes.append(contentsOf: [1, 2, 3, 4])
            }
            try bytes.write(to: URL(fileURLWithPath: path))
            // Stored frames handed out as they are still end in an error, never a clean end.
            let stream = try #require(try await store.readZstd(blob.digest))
            await #expect(throws: StrataError.self, "\(damage)") { _ = try await stream.collect(limit: 1 << 30) }
            #expect(try await store.findMissing([blob.digest]) == [blob.digest], "\(damage)")
            // Written again, then damaged again: the decompressing read fails as well.
            try await store.write(blob.digest, data: blob.data)
            try bytes.write(to: URL(fileURLWithPath: path))
            await #expect(throws: StrataError.self, "\(damage)") { _ = try await store.readAll(blob.digest) }
            #expect(try await disk.findMissing([blob.digest]) == [blob.digest], "\(damage)")
        }
    }

    /// Routing decorators (sharded, size-differentiated) hand out the frame their chosen store keeps, so
    /// a compressed-blobs reader of a composed storage gets it without recompression.
    @Test func routingDecoratorsHandOutTheStoredFrame() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let compressed = DiskBlobStore(path: root + "/a", sync: false, compressionLevel: 3)
        let plain = DiskBlobStore(path: root + "/b", sync: false)
        let sharded = ShardedBlobStore(shards: [.init(name: "a", store: compressed), .init(name: "b", store: plain)])
        let routed = SizeDifferentiatedBlobStore(limited: [.init(maxSize: 1 << 30, store: sharded)], fallback: plain)
        var framed = 0
        for seed in 1...8 as ClosedRange<UInt64> {
            let blob = compressibleBlob(size: 20_000, seed: seed)
            try await routed.write(blob.digest, data: blob.data)
            let onCompressed = sharded.shardIndex(blob.digest) == 0
            let frame = try await routed.readZstd(blob.digest)
            #expect((frame != nil) == onCompressed)
            if let frame {
                let bytes = try await frame.collect(limit: 1 << 20)
                #expect(try ZstdDecompressor.decompress(bytes, expectedSize: 20_000, subject: "frame") == blob.data)
                framed += 1
            }
        }
        #expect(framed > 0 && framed < 8, "8 blobs over two shards: \(framed) on the compressing one")
    }
}
