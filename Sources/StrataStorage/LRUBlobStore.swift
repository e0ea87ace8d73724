import Foundation
import StrataCore
import Synchronization

/// In-memory blobs under a byte budget, evicting the least recently used.
///
/// A blob larger than the whole budget is refused with RESOURCE_EXHAUSTED rather than accepted and
/// dropped, so a client never gets OK for a blob that is not stored.
public final class LRUBlobStore: BlobStore {
    public let capacityBytes: Int64
    /// Keyed by the compact key: a FindMissingBlobs of 1000 digests is 1000 look-ups under one lock.
    private let blobs: Mutex<LRUDictionary<DigestKey, Data>>

    public init(capacityBytes: Int64) {
        self.capacityBytes = capacityBytes
        self.blobs = Mutex(LRUDictionary(capacity: capacityBytes))
    }

    public var maximumBlobSize: Int64? { capacityBytes }
    public var totalBytes: Int64 { blobs.withLock { $0.totalCost } }
    public var count: Int { blobs.withLock { $0.count } }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        blobs.withLock { blobs in
            // A FindMissingBlobs hit counts as a use, as the spec asks, so the blob stays a while longer.
            digests.filter { !$0.isEmpty && blobs.get($0.key) == nil }
        }.uniqued()
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        guard let data = blobs.withLock({ $0.get(digest.key) }) else {
            throw StrataError.notFound("blob \(digest) is not in the CAS")
        }
        let start = data.startIndex + Int(range.lowerBound)
        return BlobBody(data: data[start..<(start + range.count)])
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try checkFits(digest)
        var data = Data(capacity: Int(digest.sizeBytes))
        for try await chunk in body.verifying(digest) { data.append(chunk) }
        if !digest.isEmpty { blobs.withLock { _ = $0.insert(digest.key, data, cost: digest.sizeBytes) } }
    }

    /// Hashes in the caller's task and takes the lock once for the whole batch.
    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        var accepted: [(Digest, Data)] = []
        let results = blobs.map { blob -> Result<Void, StrataError> in
            do throws(StrataError) {
                try checkFits(blob.digest)
                try blob.digest.verify(blob.data)
            } catch {
                return .failure(error)
            }
            if !blob.digest.isEmpty { accepted.append((blob.digest, blob.data)) }
            return .success(())
        }
        self.blobs.withLock { lru in
            for (digest, data) in accepted { lru.insert(digest.key, data, cost: digest.sizeBytes) }
        }
        return results
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        blobs.withLock { blobs in
            digests.map { digest in
                if digest.isEmpty { return .success(Data()) }
                guard let data = blobs.get(digest.key) else { return .failure(.notFound("blob \(digest) is not in the CAS")) }
                return .success(data)
            }
        }
    }

    public func delete(_ digests: [Digest]) async throws {
        blobs.withLock { blobs in
            for digest in digests { blobs.remove(digest.key) }
        }
    }

    private func checkFits(_ digest: Digest) throws(StrataError) {
        guard digest.sizeBytes <= capacityBytes else {
            throw .resourceExhausted(
                "blob \(digest) (\(digest.sizeBytes) bytes) is larger than this LRU storage (\(capacityBytes) bytes)")
        }
    }
}
