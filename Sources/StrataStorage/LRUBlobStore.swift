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
    private let blobs: Mutex<LRUDictionary<DigestKey, LRUBlob>>

    public init(capacityBytes: Int64) {
        self.capacityBytes = capacityBytes
        self.blobs = Mutex(LRUDictionary(capacity: capacityBytes))
    }

    public var maximumBlobSize: Int64? { capacityBytes }
    public var totalBytes: Int64 { blobs.withLock { $0.totalCost } }
    public var count: Int { blobs.withLock { $0.count } }
    /// Bytes, blobs and evictions since start, read together.
    var lruState: (bytes: Int64, blobs: Int, evictions: Int64) { blobs.withLock { ($0.totalCost, $0.count, $0.evictions) } }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        blobs.withLock { blobs in
            // A FindMissingBlobs hit counts as a use, as the spec asks, so the blob stays a while longer.
            digests.filter { !$0.isEmpty && !blobs.touch($0.key) }
        }.uniqued()
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        guard let blob = blobs.withLock({ $0.get(digest.key) }) else {
            throw StrataError.notFound("blob \(digest) is not in the CAS")
        }
        return blob.body(range)
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try checkFits(digest)
        var pieces = LRUBlob.Builder(size: digest.sizeBytes)
        for try await chunk in body.verifying(digest) { pieces.append(chunk) }
        if !digest.isEmpty { blobs.withLock { _ = $0.insert(digest.key, pieces.blob, cost: digest.sizeBytes) } }
    }

    /// Hashes the batch (on several cores when it is large, see `verifyBatch`) and takes the lock once
    /// for the whole batch.
    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        var accepted: [(Digest, Data)] = []
        var fitting: [(digest: Digest, data: Data)] = []
        var results = blobs.map { blob -> Result<Void, StrataError> in
            do throws(StrataError) {
                try checkFits(blob.digest)
            } catch {
                return .failure(error)
            }
            fitting.append(blob)
            return .success(())
        }
        var verified = await verifyBatch(fitting).makeIterator()
        for index in results.indices {
            guard case .success = results[index], let error = verified.next() else { continue }
            if let error {
                results[index] = .failure(error)
            } else if !blobs[index].digest.isEmpty {
                accepted.append((blobs[index].digest, blobs[index].data))
            }
        }
        self.blobs.withLock { lru in
            for (digest, data) in accepted { lru.insert(digest.key, .whole(data), cost: digest.sizeBytes) }
        }
        return results
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        let found = blobs.withLock { blobs in
            digests.map { digest -> Result<LRUBlob, StrataError> in
                if digest.isEmpty { return .success(.whole(Data())) }
                guard let blob = blobs.get(digest.key) else { return .failure(.notFound("blob \(digest) is not in the CAS")) }
                return .success(blob)
            }
        }
        // Joining a streamed blob's pieces copies it: outside the lock.
        return found.map { $0.map(\.joined) }
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

/// A blob as the LRU holds it: whole, or in the pieces a streamed upload arrived in.
///
/// Gathering a 64 MiB ByteStream upload into one buffer cost a copy of every byte and one 64 MiB
/// allocation, which glibc maps fresh for each blob so that its 16,384 pages fault in one by one while
/// the upload hashes; the pieces are the upload's own messages (about 1 MiB each, small ones joined up
/// to `pieceBytes`), and memory freed by evicted pieces is reused for the next upload's.
enum LRUBlob: Sendable {
    case whole(Data)
    case pieces([Data])

    static let pieceBytes = 1 << 20

    /// Collects an upload's chunks: kept as they are when large, joined when small (Bazel sends 16 KiB).
    struct Builder {
        private var pieces: [Data] = []
        private var pending = Data()
        /// The capacity reserved for `pending`.
        private var reserved = 0
        /// Bytes still to come, by the digest's size.
        private var remaining: Int64

        init(size: Int64) { remaining = size }

        mutating func append(_ chunk: Data) {
            let expected = remaining
            remaining -= Int64(chunk.count)
            if chunk.count >= LRUBlob.pieceBytes / 4 {
                flush()
                pieces.append(chunk)
                return
            }
            if pending.count + chunk.count > LRUBlob.pieceBytes { flush() }
            if pending.isEmpty {
                reserved = Int(min(Int64(LRUBlob.pieceBytes), max(Int64(chunk.count), expected)))
                pending.reserveCapacity(reserved)
            }
            pending.append(chunk)
        }

        private mutating func flush() {
            guard !pending.isEmpty else { return }
            // A piece cut short (a large chunk came next) would pin its whole reservation, which the
            // LRU does not count: keep an exact copy instead.
            if pending.count < reserved / 2 {
                pending = pending.withUnsafeBytes { Data(bytes: $0.baseAddress!, count: $0.count) }
            }
            pieces.append(pending)
            pending = Data()
            reserved = 0
        }

        var blob: LRUBlob {
            mutating get {
                flush()
                return pieces.count == 1 ? .whole(pieces[0]) : .pieces(pieces)
            }
        }
    }

    /// The blob in one buffer, for batch reads (which only hold small blobs).
    var joined: Data {
        switch self {
        case .whole(let data): return data
        case .pieces(let pieces):
            var data = Data(capacity: pieces.reduce(0) { $0 + $1.count })
            for piece in pieces { data.append(piece) }
            return data
        }
    }

    /// The bytes of `range`, a piece (or part of one) at a time, sharing the pieces' storage.
    func body(_ range: Range<Int64>) -> BlobBody {
        switch self {
        case .whole(let data):
            let start = data.startIndex + Int(range.lowerBound)
            return BlobBody(data: data[start..<(start + range.count)])
        case .pieces(let pieces):
            return BlobBody {
                var index = 0
                var pieceStart: Int64 = 0
                var position = range.lowerBound
                return BlobBody.AsyncIterator {
                    while position < range.upperBound && index < pieces.count {
                        let piece = pieces[index]
                        let pieceEnd = pieceStart + Int64(piece.count)
                        guard position < pieceEnd else {
                            index += 1
                            pieceStart = pieceEnd
                            continue
                        }
                        let end = min(pieceEnd, range.upperBound)
                        let from = piece.startIndex + Int(position - pieceStart)
                        defer { position = end }
                        return piece[from..<(from + Int(end - position))]
                    }
                    return nil
                }
            }
        }
    }
}
