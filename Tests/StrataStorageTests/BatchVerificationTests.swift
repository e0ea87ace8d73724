import Foundation
import StrataCore
@testable import StrataStorage
import StrataTestSupport
import Testing

/// A batch of `count` blobs of `size` bytes in which the blobs at `corrupt` carry other bytes than their
/// digests say (a flipped byte, or one byte short).
private func batch(count: Int, size: Int, corrupt: Set<Int>) -> [(digest: Digest, data: Data)] {
    (0..<count).map { index in
        let blob = Blob.random(size: size)
        guard corrupt.contains(index) else { return (blob.digest, blob.data) }
        var data = blob.data
        if index % 2 == 0 { data[data.startIndex] ^= 0xFF } else { data.removeLast() }
        return (blob.digest, data)
    }
}

private func failedIndices<T>(_ results: [Result<T, StrataError>]) -> Set<Int> {
    Set(results.indices.filter { if case .failure(let error) = results[$0] { error.code == .invalidArgument } else { false } })
}

@Suite struct BatchVerificationTests {
    /// Hashed in parallel parts, a batch gets the same answer per blob, in its order, as hashed one by
    /// one, whatever part a bad blob falls in (first, last, at a part's edge).
    @Test func partsAnswerAsOneByOne() async throws {
        let corrupt: Set<Int> = [0, 9, 10, 24, 39]
        let blobs = batch(count: 40, size: 3000, corrupt: corrupt)
        let sequential = await verifyBatch(blobs, parts: 1)
        for parts in [2, 3, 4, 7] {
            let parallel = await verifyBatch(blobs, parts: parts, minimumBytesPerPart: 1)
            #expect(parallel.map { $0?.message } == sequential.map { $0?.message }, "\(parts) parts")
        }
        #expect(Set(sequential.indices.filter { sequential[$0] != nil }) == corrupt)
    }

    /// Parts are contiguous, cover every blob once, are never empty, and balance bytes rather than counts.
    @Test func splitCoversEveryBlobOnce() {
        #expect(BatchVerification.split([1, 1, 1, 1], into: 2) == [0..<2, 2..<4])
        #expect(BatchVerification.split([100, 1, 1, 1], into: 2) == [0..<1, 1..<4])
        #expect(BatchVerification.split([5], into: 4) == [0..<1])
        for sizes in [[1, 1, 1, 100], [100, 100, 1], [3, 1, 4, 1, 5, 9, 2, 6], [0, 0, 0, 0]] {
            for parts in 1...sizes.count {
                let ranges = BatchVerification.split(sizes, into: parts)
                #expect(ranges.count == parts, "\(sizes) in \(parts)")
                #expect(ranges.allSatisfy { !$0.isEmpty })
                #expect(ranges.flatMap { Array($0) } == Array(sizes.indices))
            }
        }
    }

    /// A BatchUpdateBlobs-sized batch (1000 × 4 KiB, hashed in parts on a multi-core machine) into the
    /// LRU and the disk store: exactly the bad blobs fail, every good one is stored and reads back.
    @Test func largeBatchesStoreExactlyTheGoodBlobs() async throws {
        let corrupt: Set<Int> = [0, 499, 500, 501, 999]
        let blobs = batch(count: 1000, size: 4096, corrupt: corrupt)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("batch-verification-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let stores: [any BlobStore] = [
            LRUBlobStore(capacityBytes: 64 << 20), DiskBlobStore(path: folder, sync: false),
        ]
        for store in stores {
            let results = await store.writeBatch(blobs)
            #expect(failedIndices(results) == corrupt, "\(type(of: store))")
            let missing = Set(try await store.findMissing(blobs.map(\.digest)))
            #expect(missing == Set(corrupt.map { blobs[$0].digest }), "\(type(of: store))")
            for index in [1, 498, 502, 998] {
                #expect(try await store.readAll(blobs[index].digest) == blobs[index].data)
            }
        }
    }
}
