import Foundation
import PostgresNIO
import StrataCore
import StrataStorage

/// An index of the blobs of a backing storage in `strata_index` (`!sql-index`): which blobs exist, and
/// when each was last used, for the cleanup job. Small blobs (up to `maxInlineBlobSize`) live in the
/// index row itself and never reach the backing storage.
///
/// findMissing is answered from the index alone, one query per `windowSize` digests. Using a blob
/// (findMissing hit, read, write) refreshes its access time, but only when it is older than
/// `refreshAccessTimeOlderThan`, which bounds the write load of hot blobs. Refreshes lock rows with
/// `SKIP LOCKED` in key order: a row another statement holds is being touched or removed already, and
/// concurrent statements never deadlock. Totals come from a counter row kept by triggers.
///
/// Statements that only read (totals, leastRecentlyAccessed, the janitor's walk) go to `readConnection`
/// (`sql-ro` when configured); findMissing and read also refresh access times, so they use `connection`,
/// and so does hasEntries, which must see entries written a moment ago.
public final class SQLIndex: EnumerableIndex {
    public let backingStore: any BlobStore
    public let connection: SQLConnection
    public let readConnection: SQLConnection
    public let windowSize: Int
    public let maxInlineBlobSize: Int64
    public let refreshAccessTimeOlderThan: Duration

    /// Inline blobs are read whole into memory; this keeps that bounded.
    public static let inlineLimit: Int64 = 4 << 20

    public init(
        backingStore: any BlobStore, connection: SQLConnection, readOnlyConnection: SQLConnection? = nil,
        windowSize: Int = 1000, maxInlineBlobSize: Int64 = 0, refreshAccessTimeOlderThan: Duration = .zero
    ) throws(StrataError) {
        guard windowSize > 0 else { throw .invalidArgument("window-size must be positive") }
        guard (0...Self.inlineLimit).contains(maxInlineBlobSize) else {
            throw .invalidArgument("max-inline-blob-size must be between 0 and \(Self.inlineLimit) bytes")
        }
        self.backingStore = backingStore
        self.connection = connection
        self.readConnection = readOnlyConnection ?? connection
        self.windowSize = windowSize
        self.maxInlineBlobSize = maxInlineBlobSize
        self.refreshAccessTimeOlderThan = refreshAccessTimeOlderThan
    }

    public var maximumBlobSize: Int64? { backingStore.maximumBlobSize.map { max($0, maxInlineBlobSize) } }

    private var refreshSeconds: Double { Double(SQLConnection.milliseconds(refreshAccessTimeOlderThan)) / 1000 }

    private func run<Result: Sendable>(
        _ what: String, on target: SQLConnection? = nil,
        _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> Result
    ) async throws -> Result {
        try await connection.ensureMigrated()
        let target = target ?? connection
        let logger = target.logger
        return try await target.withConnection(what) { try await body($0, logger) }
    }

    private func isInline(_ digest: Digest) -> Bool { digest.sizeBytes <= maxInlineBlobSize }

    // MARK: BlobStore

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        var found = Set<Digest>()
        let refresh = refreshSeconds
        for window in candidates.windows(of: windowSize) {
            let keys = SQLDigestKeys(window)
            let present = try await run("looking up \(window.count) blobs in the index") { connection, logger in
                let rows = try await connection.query(
                    """
                    WITH wanted AS (
                        SELECT * FROM unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                    ), stale AS (
                        SELECT i.hash, i.size FROM strata_index i JOIN wanted w ON i.hash = w.hash AND i.size = w.size
                        WHERE i.accessed_at < now() - \(refresh) * interval '1 second'
                        ORDER BY i.hash, i.size FOR UPDATE OF i SKIP LOCKED
                    ), touched AS (
                        UPDATE strata_index i SET accessed_at = now() FROM stale s
                        WHERE i.hash = s.hash AND i.size = s.size RETURNING 1
                    )
                    SELECT i.hash, i.size FROM strata_index i JOIN wanted w ON i.hash = w.hash AND i.size = w.size
                    """, logger: logger)
                var present: [Digest] = []
                for try await (hash, size) in rows.decode((ByteBuffer, Int64).self) {
                    present.append(try SQLDigestKeys.digest(hash: hash, size: size))
                }
                return present
            }
            found.formUnion(present)
        }
        return candidates.filter { !found.contains($0) }
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        let hash = SQLDigestKeys.hashBytes(digest)
        let size = digest.sizeBytes
        let refresh = refreshSeconds
        let start = Int32(clamping: range.lowerBound + 1)
        let length = Int32(clamping: range.count)
        // (indexed, inline bytes of the range)
        let entry: (Bool, Data?) = try await run("looking up blob \(digest) in the index") { connection, logger in
            let rows = try await connection.query(
                """
                WITH touched AS (
                    UPDATE strata_index SET accessed_at = now()
                    WHERE hash = \(hash) AND size = \(size) AND accessed_at < now() - \(refresh) * interval '1 second'
                    RETURNING 1
                )
                SELECT substring(inline_data FROM \(start) FOR \(length)) FROM strata_index
                WHERE hash = \(hash) AND size = \(size)
                """, logger: logger)
            for try await inline in rows.decode(ByteBuffer?.self) { return (true, inline?.asData) }
            return (false, nil)
        }
        guard entry.0 else { throw StrataError.notFound("blob \(digest) is not in the CAS") }
        if let inline = entry.1 { return BlobBody(data: inline) }
        do {
            return try await backingStore.read(digest, offset: offset, limit: limit)
        } catch let error as StrataError where error.code == .notFound {
            try await dropLostEntry(digest)
            throw StrataError.notFound("blob \(digest) is not in the CAS (its index entry named a blob the storage has lost; the entry was removed)")
        }
    }

    /// Self-healing: the backing storage lost a blob the index names, so the entry goes.
    private func dropLostEntry(_ digest: Digest) async throws {
        let hash = SQLDigestKeys.hashBytes(digest)
        let size = digest.sizeBytes
        try await run("removing the index entry of lost blob \(digest)") { connection, logger in
            try await connection.execute(
                "DELETE FROM strata_index WHERE hash = \(hash) AND size = \(size) AND inline_data IS NULL", logger: logger)
        }
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        if digest.isEmpty {
            for try await _ in body.verifying(digest) {}
            return
        }
        var inline: Data?
        if isInline(digest) {
            var data = Data(capacity: Int(digest.sizeBytes))
            for try await chunk in body.verifying(digest) { data.append(chunk) }
            inline = data
        } else {
            try await backingStore.write(digest, body: body)
        }
        try await record([(digest, inline)], what: "recording blob \(digest) in the index")
    }

    /// Upserts entries (refreshing access times), in key order so concurrent batches cannot deadlock.
    private func record(_ entries: [(digest: Digest, inline: Data?)], what: String) async throws {
        var unique: [Digest: Data?] = [:]
        for entry in entries where unique[entry.digest] == nil || entry.inline != nil { unique[entry.digest] = .some(entry.inline) }
        let sorted = unique.keys.sorted()
        if sorted.isEmpty { return }
        let keys = SQLDigestKeys(sorted)
        let inlined = sorted.map { unique[$0]! != nil }
        let bodies = sorted.map { ByteBuffer(bytes: unique[$0]! ?? Data()) }
        try await run(what) { connection, logger in
            try await connection.execute(
                """
                INSERT INTO strata_index (hash, size, accessed_at, inline_data)
                SELECT hash, size, now(), CASE WHEN inlined THEN data END
                FROM unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[], \(bodies)::bytea[], \(inlined)::bool[])
                  AS e(hash, size, data, inlined)
                ON CONFLICT (hash, size) DO UPDATE
                SET accessed_at = now(), inline_data = coalesce(strata_index.inline_data, EXCLUDED.inline_data)
                """, logger: logger)
        }
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        var results = [Result<Void, StrataError>](repeating: .success(()), count: blobs.count)
        var inline: [(Int, Digest, Data)] = []
        var backed: [(Int, Digest, Data)] = []
        for (index, blob) in blobs.enumerated() where !blob.digest.isEmpty {
            if isInline(blob.digest) {
                do throws(StrataError) {
                    try blob.digest.verify(blob.data)
                    inline.append((index, blob.digest, blob.data))
                } catch {
                    results[index] = .failure(error)
                }
            } else {
                backed.append((index, blob.digest, blob.data))
            }
        }
        for (index, blob) in blobs.enumerated() where blob.digest.isEmpty {
            do throws(StrataError) { try blob.digest.verify(blob.data) } catch { results[index] = .failure(error) }
        }
        var stored: [(Int, Digest, Data?)] = inline.map { ($0.0, $0.1, $0.2) }
        if !backed.isEmpty {
            let written = await backingStore.writeBatch(backed.map { (digest: $0.1, data: $0.2) })
            for (entry, result) in zip(backed, written) {
                switch result {
                case .success: stored.append((entry.0, entry.1, nil))
                case .failure(let error): results[entry.0] = .failure(error)
                }
            }
        }
        if stored.isEmpty { return results }
        do {
            try await record(stored.map { ($0.1, $0.2) }, what: "recording \(stored.count) blobs in the index")
        } catch {
            let failure = StrataError.from(error)
            for entry in stored { results[entry.0] = .failure(failure) }
        }
        return results
    }

    public func delete(_ digests: [Digest]) async throws {
        let targets = digests.uniqued().filter { !$0.isEmpty }.sorted()
        if targets.isEmpty { return }
        let keys = SQLDigestKeys(targets)
        // Entries first: a failed backing delete then leaves an orphan blob, never an entry without a blob.
        try await run("removing \(targets.count) index entries") { connection, logger in
            try await connection.execute(
                """
                DELETE FROM strata_index i WHERE (i.hash, i.size) IN (
                    SELECT l.hash, l.size FROM strata_index l
                    JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                      ON l.hash = w.hash AND l.size = w.size
                    ORDER BY l.hash, l.size FOR UPDATE OF l
                )
                """, logger: logger)
        }
        let backed = targets.filter { !isInline($0) }
        if !backed.isEmpty { try await backingStore.delete(backed) }
    }

    // MARK: IndexedBlobStore

    public func totals() async throws -> IndexTotals {
        try await run("reading the index totals", on: readConnection) { connection, logger in
            let rows = try await connection.query("SELECT bytes, blobs FROM strata_index_totals WHERE id = 1", logger: logger)
            for try await (bytes, blobs) in rows.decode((Int64, Int64).self) { return IndexTotals(bytes: bytes, blobs: blobs) }
            throw StrataError.internal("SQL \(self.connection.settings.displayName): strata_index_totals has no row")
        }
    }

    public func leastRecentlyAccessed(before cutoff: Date, limit: Int) async throws -> [IndexEntry] {
        let limit = Int64(max(0, limit))
        return try await run("listing least recently used index entries", on: readConnection) { connection, logger in
            let rows = try await connection.query(
                """
                SELECT hash, size, accessed_at FROM strata_index WHERE accessed_at < \(cutoff)
                ORDER BY accessed_at LIMIT \(limit)
                """, logger: logger)
            var entries: [IndexEntry] = []
            for try await (hash, size, accessed) in rows.decode((ByteBuffer, Int64, Date).self) {
                entries.append(IndexEntry(digest: try SQLDigestKeys.digest(hash: hash, size: size), accessed: accessed))
            }
            return entries
        }
    }

    public func removeEntries(_ digests: [Digest], notAccessedSince cutoff: Date) async throws -> [Digest] {
        let targets = digests.uniqued().filter { !$0.isEmpty }.sorted()
        var removed: [Digest] = []
        for window in targets.windows(of: windowSize) {
            let keys = SQLDigestKeys(window)
            // SKIP LOCKED: a row being touched right now is in use, so it stays; the access-time check
            // is repeated on the locked row, so a blob used after the cutoff keeps its entry.
            let gone = try await run("removing \(window.count) unused index entries") { connection, logger in
                let rows = try await connection.query(
                    """
                    DELETE FROM strata_index i WHERE (i.hash, i.size) IN (
                        SELECT l.hash, l.size FROM strata_index l
                        JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                          ON l.hash = w.hash AND l.size = w.size
                        WHERE l.accessed_at < \(cutoff)
                        ORDER BY l.hash, l.size FOR UPDATE OF l SKIP LOCKED
                    ) AND i.accessed_at < \(cutoff)
                    RETURNING i.hash, i.size
                    """, logger: logger)
                var gone: [Digest] = []
                for try await (hash, size) in rows.decode((ByteBuffer, Int64).self) {
                    gone.append(try SQLDigestKeys.digest(hash: hash, size: size))
                }
                return gone
            }
            removed.append(contentsOf: gone)
        }
        return removed
    }

    // MARK: EnumerableIndex

    /// Walks in key order, one page per statement after the last key seen (keyset pagination): no
    /// cursor or transaction stays open while `body` runs, and each page is an index range scan.
    public func forEachEntryPage(pageSize: Int, _ body: ([IndexEntry]) async throws -> Void) async throws {
        let limit = Int64(max(pageSize, 1))
        var after: (hash: ByteBuffer, size: Int64)?
        while true {
            let last = after
            let page: (entries: [IndexEntry], last: (ByteBuffer, Int64)?) = try await run(
                "listing index entries", on: readConnection
            ) { connection, logger in
                let rows: PostgresRowSequence
                if let last {
                    rows = try await connection.query(
                        """
                        SELECT hash, size, accessed_at FROM strata_index WHERE (hash, size) > (\(last.hash), \(last.size))
                        ORDER BY hash, size LIMIT \(limit)
                        """, logger: logger)
                } else {
                    rows = try await connection.query(
                        "SELECT hash, size, accessed_at FROM strata_index ORDER BY hash, size LIMIT \(limit)", logger: logger)
                }
                var entries: [IndexEntry] = []
                var lastKey: (ByteBuffer, Int64)?
                for try await (hash, size, accessed) in rows.decode((ByteBuffer, Int64, Date).self) {
                    entries.append(IndexEntry(digest: try SQLDigestKeys.digest(hash: hash, size: size), accessed: accessed))
                    lastKey = (hash, size)
                }
                return (entries, lastKey)
            }
            if !page.entries.isEmpty { try await body(page.entries) }
            guard let lastKey = page.last, page.entries.count == Int(limit) else { return }
            after = lastKey
        }
    }

    public func hasEntries(_ digests: [Digest]) async throws -> [Bool] {
        var indexed = Set<Digest>()
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        for window in candidates.windows(of: windowSize) {
            let keys = SQLDigestKeys(window)
            let present = try await run("checking \(window.count) index entries") { connection, logger in
                let rows = try await connection.query(
                    """
                    SELECT i.hash, i.size FROM strata_index i
                    JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                      ON i.hash = w.hash AND i.size = w.size
                    """, logger: logger)
                var present: [Digest] = []
                for try await (hash, size) in rows.decode((ByteBuffer, Int64).self) {
                    present.append(try SQLDigestKeys.digest(hash: hash, size: size))
                }
                return present
            }
            indexed.formUnion(present)
        }
        return digests.map { indexed.contains($0) }
    }

    /// Inline blobs live in their index row; the backing storage never had them.
    public func storedInBackingStore(_ digests: [Digest]) -> [Digest] {
        digests.filter { !isInline($0) }
    }
}
