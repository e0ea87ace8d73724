import Foundation
import StrataCore
import StrataStorage

/// An instance's CAS storage, telling a `BlobSizeIndex` the size of every blob written, found or read
/// through it, so that `GET /cas/{hash}` of Bazel's HTTP cache protocol finds blobs uploaded over gRPC.
/// It changes nothing else: every call goes to `base` as it was.
public struct SizeRecordingBlobStore: BlobStore {
    public let base: any BlobStore
    public let index: BlobSizeIndex

    public init(_ base: any BlobStore, index: BlobSizeIndex) {
        self.base = base
        self.index = index
    }

    public var maximumBlobSize: Int64? { base.maximumBlobSize }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let missing = try await base.findMissing(digests)
        let absent = Set(missing)
        index.record(digests.lazy.filter { !absent.contains($0) })
        return missing
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let body = try await base.read(digest, offset: offset, limit: limit)
        index.record(digest)
        return body
    }

    /// Passed on: the frame is the blob as `base` stores it, so compressed-blobs readers keep getting
    /// it without recompression with an `!http-channel` configured.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        let body = try await base.readZstd(digest)
        if body != nil { index.record(digest) }
        return body
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try await base.write(digest, body: body)
        index.record(digest)
    }

    public func delete(_ digests: [Digest]) async throws {
        try await base.delete(digests)
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        let results = await base.readBatch(digests)
        index.record(zip(digests, results).compactMap { digest, result in
            if case .success = result { digest } else { nil }
        })
        return results
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        let results = await base.writeBatch(blobs)
        index.record(zip(blobs, results).compactMap { blob, result in
            if case .success = result { blob.digest } else { nil }
        })
        return results
    }
}
