import Foundation
import StrataCore
import StrataStorage

/// A blob damaged at rest, as each backend's test damages it (a flipped byte in a file, a garbage or
/// short row, a garbage object), noticed every way a store can notice it. For each way, the damaged
/// copy must never be served as OK, FindMissingBlobs must then report the blob missing, and the
/// client's upload of the right bytes must heal it.
public enum CorruptionScenario {
    /// `store` is what clients go through (the verifying store, or an index over it); `damage` breaks
    /// the stored copy of a blob already written. `size` above 1 MiB makes the streamed read span chunks.
    public static func run(
        on store: any BlobStore, size: Int, damage: @escaping @Sendable (Blob) async throws -> Void
    ) async throws {
        // 1. A streamed whole-blob read (ByteStream Read, a GetTree root): an error, never the blob.
        let blob = Blob.random(size: size)
        try await store.write(blob.digest, data: blob.data)
        try await damage(blob)
        var received = 0
        do {
            for try await chunk in try await store.read(blob.digest, offset: 0, limit: nil) { received += chunk.count }
            throw ConformanceFailure("a read of a damaged copy ended OK after \(received) bytes")
        } catch let error as StrataError {
            try expect(error.code == .notFound, "a read of a damaged copy: got \(error), expected NOT_FOUND")
            try expect(error.message.contains("corrupt"), "the error does not say the copy was corrupt: \(error)")
        }
        try expect(received < size, "all \(size) bytes of a damaged copy were sent before the error")
        try expect(try await store.findMissing([blob.digest]) == [blob.digest], "a copy found corrupt by a read is still reported present")
        try await store.write(blob.digest, data: blob.data)
        try expect(try await store.readAll(blob.digest) == blob.data, "the upload after a corrupt read did not heal the copy")
        try expect(try await store.findMissing([blob.digest]).isEmpty, "a healed blob is reported missing")

        // 2. BatchReadBlobs: that item fails NOT_FOUND, the others are served.
        let other = Blob.random(size: 100)
        try await store.write(other.digest, data: other.data)
        try await damage(blob)
        let batch = await store.readBatch([blob.digest, other.digest])
        try expectFailure(batch[0], .notFound, "a batch read of a damaged copy")
        try expect((try? batch[1].get()) == other.data, "a batch read failed an intact blob next to a damaged one")
        try expect(try await store.findMissing([blob.digest, other.digest]) == [blob.digest], "a copy found corrupt by a batch read is still reported present")
        try expect(await store.writeBatch([(blob.digest, blob.data)]).allSatisfy { (try? $0.get()) != nil }, "the healing batch upload failed")
        try expect((try? await store.readBatch([blob.digest])[0].get()) == blob.data, "the batch upload did not heal the copy")

        // 3. An upload before any read noticed: the write must not be skipped because the blob looks stored.
        try await damage(blob)
        try await store.write(blob.digest, data: blob.data)
        try expect(try await store.readAll(blob.digest) == blob.data, "an upload over a damaged copy left it damaged")
        try await damage(blob)
        try expect(await store.writeBatch([(blob.digest, blob.data)]).allSatisfy { (try? $0.get()) != nil }, "a batch upload over a damaged copy failed")
        try expect(try await store.readAll(blob.digest) == blob.data, "a batch upload over a damaged copy left it damaged")
    }

    /// The same bytes with one flipped, for same-size damage.
    public static func flipped(_ data: Data, at position: Int? = nil) -> Data {
        var copy = data
        let index = copy.startIndex + (position ?? copy.count / 2)
        copy[index] ^= 0x40
        return copy
    }
}
