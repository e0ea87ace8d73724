import Foundation
import PostgresNIO
import StrataCompression
import StrataCore
import StrataStorage

/// Blobs as rows of `strata_blobs` (`!sql-storage`): for small blobs, up to `maximumBlobSize`.
///
/// A write gathers the verified body (bounded by the blob size limit) and inserts it in one statement,
/// so a row exists only for a complete, verified blob. Reads fetch ranges with `substring`, in chunks of
/// `readChunkSize`, so serving a large blob holds one chunk at a time. Lookups and the janitor's listing
/// go to `readConnection` (`sql-ro` when configured), writes to `connection`; a NOT_FOUND and the
/// check before a write are confirmed on `connection`, since a replica may lag. `stored_at` records when a
/// row was inserted, which the listing reports as the blob's modification time.
///
/// With `compressionLevel`, new rows hold one zstd frame of the blob (`compressed` true), read whole and
/// decompressed as they stream; rows of both kinds are read whatever the setting (the same statement
/// finds either), so switching it loses no blob. A compressed row that does not decompress to exactly
/// its blob's size is DATA_LOSS, as an uncompressed row of the wrong length is.
public final class SQLBlobStore: ListableBlobStore {
    public let connection: SQLConnection
    public let readConnection: SQLConnection
    public let blobSizeLimit: Int64
    /// The zstd level new rows are stored at; nil: stored as they are.
    public let compressionLevel: Int32?

    public static let defaultMaximumBlobSize: Int64 = 64 << 20
    static let readChunkSize: Int64 = 2 << 20

    public init(
        connection: SQLConnection, readOnlyConnection: SQLConnection? = nil, maximumBlobSize: Int64 = defaultMaximumBlobSize,
        compressionLevel: Int32? = nil
    ) {
        self.compressionLevel = compressionLevel
        self.connection = connection
        self.readConnection = readOnlyConnection ?? connection
        self.blobSizeLimit = maximumBlobSize
    }

    public var maximumBlobSize: Int64? { blobSizeLimit }

    private func reading<Result: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> Result
    ) async throws -> Result {
        try await connection.ensureMigrated()
        let logger = readConnection.logger
        return try await readConnection.withConnection(what) { try await body($0, logger) }
    }

    private func writing<Result: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> Result
    ) async throws -> Result {
        try await connection.ensureMigrated()
        let logger = connection.logger
        return try await connection.withConnection(what) { try await body($0, logger) }
    }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        try await missing(digests, onPrimary: false)
    }

    /// The digests not stored, as `readConnection` (or, `onPrimary`, `connection`) sees them: a check
    /// that decides whether to write must not trust a replica that may lag behind a delete.
    private func missing(_ digests: [Digest], onPrimary: Bool) async throws -> [Digest] {
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        if candidates.isEmpty { return [] }
        let keys = SQLDigestKeys(candidates)
        let what = "looking up \(candidates.count) blobs"
        let query: @Sendable (PostgresConnection, Logger) async throws -> Set<Digest> = { connection, logger in
            let rows = try await connection.query(
                """
                SELECT b.hash, b.size FROM strata_blobs b
                JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                  ON b.hash = w.hash AND b.size = w.size
                WHERE b.compressed OR octet_length(b.data) = b.size
                """, logger: logger)
            return Set(try await rows.digests())
        }
        let found = onPrimary ? try await writing(what, query) : try await reading(what, query)
        return candidates.filter { !found.contains($0) }
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        let firstCount = min(Self.readChunkSize, Int64(range.count))
        // A replica (`sql-ro`) may not have a blob written a moment ago: the primary has the last word
        // on NOT_FOUND, which an index above would take as the blob being lost.
        var fetched = try await fetchWithLength(digest, from: range.lowerBound, count: firstCount, onPrimary: false)
        if fetched == nil, readConnection !== connection {
            fetched = try await fetchWithLength(digest, from: range.lowerBound, count: firstCount, onPrimary: true)
        }
        guard let fetched else {
            throw StrataError.notFound("blob \(digest) is not in the CAS")
        }
        if fetched.compressed {
            // The whole frame (at most about the blob size limit), decompressed a chunk at a time.
            let whole = BlobBody(data: fetched.data).zstdDecompressed(
                expectedSize: digest.sizeBytes, subject: "blob \(digest) in SQL storage", failureCode: .dataLoss)
            return range == 0..<digest.sizeBytes ? whole : whole.slice(range)
        }
        let first = try Self.checked(fetched, digest, count: firstCount)
        if firstCount == Int64(range.count) { return BlobBody(data: first) }
        return .ranged(range, chunkSize: Self.readChunkSize, first: first) { offset, count in
            guard let chunk = try await self.fetch(digest, from: offset, count: count) else {
                throw StrataError.notFound("blob \(digest) was deleted while being read")
            }
            return chunk
        }
    }

    /// Bytes `[offset, offset + count)` of a stored blob; nil when the blob is not stored. A row whose
    /// length is not the digest's size is a damaged copy: DATA_LOSS, which `VerifyingBlobStore` turns
    /// into its removal and a NOT_FOUND.
    private func fetch(_ digest: Digest, from offset: Int64, count: Int64, onPrimary: Bool = false) async throws -> Data? {
        guard let fetched = try await fetchWithLength(digest, from: offset, count: count, onPrimary: onPrimary) else { return nil }
        guard !fetched.compressed else {
            // Deleted and stored again compressed since the read began: not a damaged row.
            throw StrataError.unavailable("blob \(digest) was stored again while being read: read it again")
        }
        return try Self.checked(fetched, digest, count: count)
    }

    private static func checked(_ fetched: Fetched, _ digest: Digest, count: Int64) throws -> Data {
        guard fetched.length == digest.sizeBytes, Int64(fetched.data.count) == count else {
            throw StrataError(.dataLoss, "size mismatch: the row of blob \(digest) holds \(fetched.length) bytes, the digest says \(digest.sizeBytes)")
        }
        return fetched.data
    }

    /// A row as `fetchWithLength` finds it: the range's bytes (a compressed row's whole frame), the
    /// stored length, and whether it is compressed.
    private struct Fetched: Sendable {
        var data: Data
        var length: Int64
        var compressed: Bool
    }

    /// The range's bytes and the whole row's length (`octet_length` reads it without fetching the data);
    /// all of a compressed row, whose ranges are in its decompressed bytes.
    private func fetchWithLength(
        _ digest: Digest, from offset: Int64, count: Int64, onPrimary: Bool
    ) async throws -> Fetched? {
        let hash = SQLDigestKeys.hashBytes(digest)
        let size = digest.sizeBytes
        // substring takes int4; blobs here are at most blobSizeLimit, far below 2 GiB.
        let start = Int32(clamping: offset + 1)
        let length = Int32(clamping: count)
        let query: @Sendable (PostgresConnection, Logger) async throws -> Fetched? = { connection, logger in
            let rows = try await connection.query(
                """
                SELECT CASE WHEN compressed THEN data ELSE substring(data FROM \(start) FOR \(length)) END,
                       octet_length(data)::int8, compressed
                FROM strata_blobs WHERE hash = \(hash) AND size = \(size)
                """,
                logger: logger)
            for try await (part, stored, compressed) in rows.decode((ByteBuffer, Int64, Bool).self) {
                return Fetched(data: part.asData, length: stored, compressed: compressed)
            }
            return nil
        }
        let what = "reading blob \(digest)"
        return onPrimary ? try await writing(what, query) : try await reading(what, query)
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        if digest.isEmpty {
            for try await _ in body.verifying(digest) {}
            return
        }
        try checkFits(digest)
        // Skips the upload of a blob already stored (on the primary: a replica may still show a blob
        // a cleanup has just deleted).
        if try await missing([digest], onPrimary: true).isEmpty { return }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(Int(digest.sizeBytes))
        // Compressed after verification: the frame ends only once the blob verified.
        let verified = body.verifying(digest)
        let stored = compressionLevel.map { verified.zstdCompressed(level: $0, uncompressedSize: digest.sizeBytes) } ?? verified
        for try await chunk in stored { buffer.writeBytes(chunk) }
        let hash = SQLDigestKeys.hashBytes(digest)
        let size = digest.sizeBytes
        let data = buffer
        let compressed = compressionLevel != nil
        try await writing("storing blob \(digest)") { connection, logger in
            try await connection.execute(
                "INSERT INTO strata_blobs (hash, size, data, compressed) VALUES (\(hash), \(size), \(data), \(compressed)) \(unescaped: Self.replacingDamagedRow)",
                logger: logger)
        }
    }

    /// A row already there is kept (the write is the same blob), unless it is uncompressed and its
    /// length is not its size: a damaged row, which `findMissing` reported missing, is replaced by the
    /// verified bytes. (A damaged compressed row is found only by decompressing it; the read that does
    /// has it deleted.)
    static let replacingDamagedRow = """
        ON CONFLICT (hash, size) DO UPDATE SET data = EXCLUDED.data, compressed = EXCLUDED.compressed, stored_at = now()
        WHERE NOT strata_blobs.compressed AND octet_length(strata_blobs.data) <> strata_blobs.size
        """

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        var results = [Result<Void, StrataError>](repeating: .success(()), count: blobs.count)
        var accepted: [Digest: (index: [Int], data: Data)] = [:]
        for (index, blob) in blobs.enumerated() {
            do throws(StrataError) {
                try checkFits(blob.digest)
                try blob.digest.verify(blob.data)
            } catch {
                results[index] = .failure(error)
                continue
            }
            if blob.digest.isEmpty { continue }
            if accepted[blob.digest] != nil {
                accepted[blob.digest]!.index.append(index)
                continue
            }
            do throws(StrataError) {
                let data = try compressionLevel.map { level throws(StrataError) in try ZstdCompressor.compress(blob.data, level: level) } ?? blob.data
                accepted[blob.digest] = ([index], data)
            } catch {
                results[index] = .failure(error)
            }
        }
        if accepted.isEmpty { return results }
        // Sorted by key: concurrent batches then take the rows' locks in one order and cannot deadlock.
        let sorted = accepted.keys.sorted()
        let keys = SQLDigestKeys(sorted)
        let bodies = sorted.map { ByteBuffer(bytes: accepted[$0]!.data) }
        let compressed = compressionLevel != nil
        do {
            try await writing("storing \(sorted.count) blobs") { connection, logger in
                try await connection.execute(
                    """
                    INSERT INTO strata_blobs (hash, size, data, compressed)
                    SELECT w.hash, w.size, w.data, \(compressed)
                    FROM unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[], \(bodies)::bytea[]) AS w(hash, size, data)
                    \(unescaped: Self.replacingDamagedRow)
                    """, logger: logger)
            }
        } catch {
            let failure = StrataError.from(error)
            for entry in accepted.values { for index in entry.index { results[index] = .failure(failure) } }
        }
        return results
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        let wanted = digests.uniqued().filter { !$0.isEmpty }
        var found: [Digest: (data: Data, compressed: Bool)] = [:]
        if !wanted.isEmpty {
            do {
                found = try await blobs(wanted, onPrimary: false)
                // As in `read`: the primary has the last word on NOT_FOUND.
                let absent = wanted.filter { found[$0] == nil }
                if !absent.isEmpty, readConnection !== connection {
                    found.merge(try await blobs(absent, onPrimary: true)) { first, _ in first }
                }
            } catch {
                let failure = StrataError.from(error)
                return digests.map { $0.isEmpty ? .success(Data()) : .failure(failure) }
            }
        }
        return digests.map { digest in
            if digest.isEmpty { return .success(Data()) }
            guard let (stored, compressed) = found[digest] else { return .failure(.notFound("blob \(digest) is not in the CAS")) }
            if compressed {
                return Result { () throws(StrataError) in
                    try ZstdDecompressor.decompress(
                        stored, expectedSize: digest.sizeBytes, subject: "blob \(digest) in SQL storage", failureCode: .dataLoss)
                }
            }
            let data = stored
            guard Int64(data.count) == digest.sizeBytes else {
                return .failure(StrataError(.dataLoss, "size mismatch: the row of blob \(digest) holds \(data.count) bytes, the digest says \(digest.sizeBytes)"))
            }
            return .success(data)
        }
    }

    private func blobs(_ wanted: [Digest], onPrimary: Bool) async throws -> [Digest: (data: Data, compressed: Bool)] {
        let keys = SQLDigestKeys(wanted)
        let what = "reading \(wanted.count) blobs"
        let query: @Sendable (PostgresConnection, Logger) async throws -> [Digest: (data: Data, compressed: Bool)] = { connection, logger in
            let rows = try await connection.query(
                """
                SELECT b.hash, b.size, b.data, b.compressed FROM strata_blobs b
                JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                  ON b.hash = w.hash AND b.size = w.size
                """, logger: logger)
            var found: [Digest: (data: Data, compressed: Bool)] = [:]
            for try await (hash, size, data, compressed) in rows.decode((ByteBuffer, Int64, ByteBuffer, Bool).self) {
                found[try SQLDigestKeys.digest(hash: hash, size: size)] = (data.asData, compressed)
            }
            return found
        }
        return onPrimary ? try await writing(what, query) : try await reading(what, query)
    }

    /// A compressed row's frame as it is stored; nil for a blob stored uncompressed or absent.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        if digest.isEmpty { return nil }
        let hash = SQLDigestKeys.hashBytes(digest)
        let size = digest.sizeBytes
        let frame = try await reading("reading blob \(digest)") { connection, logger -> Data? in
            let rows = try await connection.query(
                "SELECT data FROM strata_blobs WHERE hash = \(hash) AND size = \(size) AND compressed", logger: logger)
            for try await data in rows.decode(ByteBuffer.self) { return data.asData }
            return nil
        }
        return frame.map { BlobBody(data: $0) }
    }

    public func delete(_ digests: [Digest]) async throws {
        let targets = digests.uniqued().filter { !$0.isEmpty }.sorted()
        if targets.isEmpty { return }
        let keys = SQLDigestKeys(targets)
        try await writing("deleting \(targets.count) blobs") { connection, logger in
            try await connection.execute(
                """
                DELETE FROM strata_blobs b
                USING unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                WHERE b.hash = w.hash AND b.size = w.size
                """, logger: logger)
        }
    }

    public func forEachBlobPage(pageSize: Int, _ body: ([StoredBlob]) async throws -> Void) async throws {
        try await readConnection.forEachKeyPage(table: "strata_blobs", timeColumn: "stored_at", pageSize: pageSize, migrating: connection) {
            try await body($0.map { StoredBlob(digest: $0.digest, modified: $0.time) })
        }
    }

    private func checkFits(_ digest: Digest) throws(StrataError) {
        guard digest.sizeBytes <= blobSizeLimit else {
            throw .resourceExhausted(
                "blob \(digest) (\(digest.sizeBytes) bytes) is larger than SQL storage accepts (\(blobSizeLimit) bytes); "
                    + "put large blobs elsewhere with !size-differentiated-storage")
        }
    }
}
