import Foundation
import StrataCore

/// The one interface every storage backend and decorator implements.
///
/// Contract (checked for every implementation by `BlobStoreConformance` in the tests):
/// - Blobs are keyed by hash *and* size.
/// - The empty blob is always present and never stored.
/// - `write` verifies hash and size while streaming; nothing becomes readable unless the whole body
///   verified, and a reader never sees part of a blob.
/// - Errors are `StrataError`s with the status code a client should get.
public protocol BlobStore: Sendable {
    /// The digests among `digests` that are not stored, in request order, without duplicates.
    func findMissing(_ digests: [Digest]) async throws -> [Digest]

    /// Streams bytes `[offset, offset + limit)` of a stored blob (`limit` nil: to the end).
    /// NOT_FOUND when absent; OUT_OF_RANGE when `offset` is past the end.
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody

    /// Stores `body` as `digest`. May return without consuming `body` when the blob is already stored.
    func write(_ digest: Digest, body: BlobBody) async throws

    /// Removes the blobs; absent ones are ignored.
    func delete(_ digests: [Digest]) async throws

    /// Reads several small blobs. The default reads them one by one, concurrently.
    func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>]

    /// Writes several small blobs. The default writes them one by one, concurrently.
    func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>]

    /// The largest blob this store accepts, if it has a limit.
    var maximumBlobSize: Int64? { get }

    /// The whole blob as the store holds it compressed at rest: a zstd stream whose decompressed bytes
    /// are the blob, for a `compressed-blobs/zstd` reader to get without recompressing; nil when the
    /// store does not hold `digest` compressed (absent, or stored as it is: `read` it). The default is
    /// nil. Invariant: a store answers only from a copy it wrote compressed, and a decorator passes it
    /// on only when it changes nothing of what is stored (metrics); `VerifyingBlobStore` decompresses
    /// and hashes the stream alongside, as for `read`, failing it instead of ending it on a mismatch.
    func readZstd(_ digest: Digest) async throws -> BlobBody?
}

extension BlobStore {
    public var maximumBlobSize: Int64? { nil }

    public func readZstd(_ digest: Digest) async throws -> BlobBody? { nil }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        await concurrentMap(digests) { digest in
            try await self.read(digest, offset: 0, limit: nil).collect(limit: digest.sizeBytes)
        }
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        await concurrentMap(blobs) { blob in
            try await self.write(blob.digest, body: BlobBody(data: blob.data))
        }
    }

    /// Reads a whole blob into memory; for blobs known to be small.
    public func readAll(_ digest: Digest) async throws -> Data {
        try await read(digest, offset: 0, limit: nil).collect(limit: digest.sizeBytes)
    }

    public func write(_ digest: Digest, data: Data) async throws {
        try await write(digest, body: BlobBody(data: data))
    }
}

/// Runs `operation` on every element with bounded concurrency, keeping input order in the results.
public func concurrentMap<Element: Sendable, Value: Sendable>(
    _ elements: [Element], maxConcurrency: Int = 16,
    _ operation: @escaping @Sendable (Element) async throws -> Value
) async -> [Result<Value, StrataError>] {
    var results = [Result<Value, StrataError>?](repeating: nil, count: elements.count)
    await withTaskGroup(of: (Int, Result<Value, StrataError>).self) { group in
        var next = 0
        func addNext() {
            let index = next
            let element = elements[index]
            next += 1
            group.addTask {
                do { return (index, .success(try await operation(element))) } catch {
                    return (index, .failure(StrataError.from(error)))
                }
            }
        }
        while next < elements.count && next < maxConcurrency { addNext() }
        for await (index, result) in group {
            results[index] = result
            if next < elements.count { addNext() }
        }
    }
    return results.map { $0! }
}

/// Checks shared by every store's `read`: the offset and limit against the digest's size.
/// Returns the byte range to serve.
public func validatedRange(_ digest: Digest, offset: Int64, limit: Int64?) throws(StrataError) -> Range<Int64> {
    guard offset >= 0 else { throw .outOfRange("read offset \(offset) is negative") }
    guard offset <= digest.sizeBytes else {
        throw .outOfRange("read offset \(offset) is past the end of blob \(digest) (\(digest.sizeBytes) bytes)")
    }
    if let limit, limit < 0 { throw .invalidArgument("read limit \(limit) is negative") }
    let available = digest.sizeBytes - offset
    let count = (limit == nil || limit == 0) ? available : min(limit!, available)
    return offset..<(offset + count)
}

extension Array where Element == Digest {
    /// Order-preserving de-duplication, for `findMissing` answers.
    public func uniqued() -> [Digest] {
        if count < 2 { return self }
        var seen = Set<Digest>(minimumCapacity: count)
        return filter { seen.insert($0).inserted }
    }
}
