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
    /// How long the "being written" and "being deleted" marks (`strata_index_marks`) hold if never cleared.
    public let writeLease: Duration
    public let deletionLease: Duration

    /// Inline blobs are read whole into memory; this keeps that bounded.
    public static let inlineLimit: Int64 = 4 << 20

    public init(
        backingStore: any BlobStore, connection: SQLConnection, readOnlyConnection: SQLConnection? = nil,
        windowSize: Int = 1000, maxInlineBlobSize: Int64 = 0, refreshAccessTimeOlderThan: Duration = .zero,
        writeLease: Duration = IndexLeases.writing, deletionLease: Duration = IndexLeases.deleting
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
        self.writeLease = writeLease
        self.deletionLease = deletionLease
    }

    public var maximumBlobSize: Int64? { backingStore.maximumBlobSize.map { max($0, maxInlineBlobSize) } }

    private var refreshSeconds: Double { refreshAccessTimeOlderThan.timeInterval }

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

    private func inTransaction<Result: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> Result
    ) async throws -> Result {
        try await run(what) { connection, logger in
            try await connection.withTransaction(logger: logger) { try await body($0, logger) }
        }
    }

    // MARK: BlobStore

    /// A blob is reported present only once this call has refreshed its access time, or when it was
    /// used within `refreshAccessTimeOlderThan`: the cleaner re-checks access times when it removes
    /// entries, so a blob reported present is not deleted inside the protection window.
    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        var found = Set<Digest>()
        let refresh = refreshSeconds
        for window in candidates.windows(of: windowSize) {
            let keys = SQLDigestKeys(window)
            // (present, row seen but not confirmed: locked by another statement right now)
            let (present, locked) = try await run("looking up \(window.count) blobs in the index") { connection, logger in
                // SKIP LOCKED keeps concurrent lookups of hot blobs from queueing on each other's
                // refreshes; a row skipped that way is settled below.
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
                        WHERE i.hash = s.hash AND i.size = s.size RETURNING i.hash, i.size
                    )
                    SELECT i.hash, i.size, i.accessed_at >= now() - \(refresh) * interval '1 second'
                    FROM strata_index i JOIN wanted w ON i.hash = w.hash AND i.size = w.size
                    UNION ALL SELECT hash, size, true FROM touched
                    """, logger: logger)
                var confirmed = Set<Digest>()
                var seen: [Digest] = []
                for try await (hash, size, fresh) in rows.decode((ByteBuffer, Int64, Bool).self) {
                    let digest = try SQLDigestKeys.digest(hash: hash, size: size)
                    if fresh { confirmed.insert(digest) } else { seen.append(digest) }
                }
                return (confirmed, seen.filter { !confirmed.contains($0) }.uniqued())
            }
            found.formUnion(present)
            if !locked.isEmpty { found.formUnion(try await touchWaiting(locked.sorted())) }
        }
        return candidates.filter { !found.contains($0) }
    }

    /// Refreshes the access times of `sorted`, waiting for rows other statements hold: a refresh
    /// finishes first; a cleaner's removal takes the row away, so it is not reported. Returns those
    /// refreshed.
    private func touchWaiting(_ sorted: [Digest]) async throws -> [Digest] {
        let keys = SQLDigestKeys(sorted)
        return try await run("refreshing \(sorted.count) access times") { connection, logger in
            let rows = try await connection.query(
                """
                WITH locked AS (
                    SELECT i.hash, i.size FROM strata_index i
                    JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                      ON i.hash = w.hash AND i.size = w.size
                    ORDER BY i.hash, i.size FOR UPDATE OF i
                )
                UPDATE strata_index i SET accessed_at = now() FROM locked l
                WHERE i.hash = l.hash AND i.size = l.size RETURNING i.hash, i.size
                """, logger: logger)
            return try await rows.digests()
        }
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
            // SKIP LOCKED: the refresh never waits for a row another statement holds (a refresh or a
            // removal under way), so it can neither delay nor fail the read (lock_timeout).
            let rows = try await connection.query(
                """
                WITH stale AS (
                    SELECT hash, size FROM strata_index
                    WHERE hash = \(hash) AND size = \(size) AND accessed_at < now() - \(refresh) * interval '1 second'
                    FOR UPDATE SKIP LOCKED
                ), touched AS (
                    UPDATE strata_index i SET accessed_at = now() FROM stale s
                    WHERE i.hash = s.hash AND i.size = s.size
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
            // A copy found corrupt while it streams is removed by the storage: its entry goes too.
            return try await backingStore.read(digest, offset: offset, limit: limit)
                .onNotFound { try? await self.dropLostEntry(digest) }
        } catch let error as StrataError where error.code == .notFound {
            try await dropLostEntry(digest)
            throw StrataError.notFound("blob \(digest) is not in the CAS (its index entry named a blob the storage has lost; the entry was removed)")
        }
    }

    /// Self-healing: the backing storage lost a blob the index names, so the entry goes.
    private func dropLostEntry(_ digest: Digest) async throws {
        let hash = SQLDigestKeys.hashBytes(digest)
        let size = digest.sizeBytes
        // A write of it under way is storing it again: its entry stays.
        try await run("removing the index entry of lost blob \(digest)") { connection, logger in
            try await connection.execute(
                """
                DELETE FROM strata_index WHERE hash = \(hash) AND size = \(size) AND inline_data IS NULL
                AND NOT EXISTS (
                    SELECT 1 FROM strata_index_marks m WHERE m.hash = \(hash) AND m.size = \(size) AND m.writing_until > now()
                )
                """, logger: logger)
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
            try await record([(digest, inline)], what: "recording blob \(digest) in the index")
            return
        }
        try await beginWriting([digest])
        do {
            try await backingStore.write(digest, body: body)
        } catch {
            try? await endWriting([digest])
            throw error
        }
        try await record([(digest, nil)], endingWritesOf: [digest], what: "recording blob \(digest) in the index")
    }

    /// Marks the digests "being written" (one more write of each), waiting while any is "being deleted".
    private func beginWriting(_ digests: [Digest]) async throws {
        let lease = writeLease.timeInterval
        try await waitingOutDeletions(digests.uniqued().sorted()) { pending in
            var granted = Set<Digest>()
            for window in pending.windows(of: windowSize) {
                let keys = SQLDigestKeys(window)
                let marked = try await run("marking \(window.count) blobs as being written") { connection, logger in
                    let rows = try await connection.query(
                        """
                        INSERT INTO strata_index_marks AS m (hash, size, writers, writing_until)
                        SELECT hash, size, 1, now() + \(lease) * interval '1 second'
                        FROM unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size) ORDER BY hash, size
                        ON CONFLICT (hash, size) DO UPDATE SET
                            writers = CASE WHEN m.writing_until > now() THEN m.writers + 1 ELSE 1 END,
                            writing_until = greatest(m.writing_until, EXCLUDED.writing_until),
                            deleting_until = NULL
                        WHERE m.deleting_until IS NULL OR m.deleting_until <= now()
                        RETURNING m.hash, m.size
                        """, logger: logger)
                    return try await rows.digests()
                }
                granted.formUnion(marked)
            }
            return pending.filter { !granted.contains($0) }
        }
    }

    /// Ends writes that failed: their marks go without recording the blobs.
    private func endWriting(_ digests: [Digest]) async throws {
        let sorted = digests.uniqued().sorted()
        guard !sorted.isEmpty else { return }
        try await inTransaction("ending \(sorted.count) failed writes") { connection, logger in
            try await Self.endWrites(sorted, on: connection, logger: logger)
        }
    }

    /// Ends one write of each of `sorted`: the mark goes with its last writer. Runs inside a transaction.
    private static func endWrites(_ sorted: [Digest], on connection: PostgresConnection, logger: Logger) async throws {
        let keys = SQLDigestKeys(sorted)
        try await connection.execute(
            """
            WITH locked AS (
                SELECT m.hash, m.size FROM strata_index_marks m
                JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                  ON m.hash = w.hash AND m.size = w.size
                ORDER BY m.hash, m.size FOR UPDATE OF m
            )
            UPDATE strata_index_marks m SET writers = m.writers - 1 FROM locked l
            WHERE m.hash = l.hash AND m.size = l.size
            """, logger: logger)
        try await connection.execute(
            """
            DELETE FROM strata_index_marks m USING unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
            WHERE m.hash = w.hash AND m.size = w.size AND m.writers <= 0
              AND (m.deleting_until IS NULL OR m.deleting_until <= now())
            """, logger: logger)
    }

    /// Upserts entries (refreshing access times), in key order so concurrent batches cannot deadlock,
    /// and ends the writes of `endingWritesOf` in the same transaction.
    private func record(_ entries: [(digest: Digest, inline: Data?)], endingWritesOf writes: [Digest] = [], what: String) async throws {
        var unique: [Digest: Data?] = [:]
        for entry in entries where unique[entry.digest] == nil || entry.inline != nil { unique[entry.digest] = .some(entry.inline) }
        let sorted = unique.keys.sorted()
        if sorted.isEmpty { return }
        let keys = SQLDigestKeys(sorted)
        let inlined = sorted.map { unique[$0]! != nil }
        let bodies = sorted.map { ByteBuffer(bytes: unique[$0]! ?? Data()) }
        let ending = writes.uniqued().sorted()
        let upsert: @Sendable (PostgresConnection, Logger) async throws -> Void = { connection, logger in
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
        // Inline blobs have no marks: one statement, no transaction.
        if ending.isEmpty { return try await run(what, upsert) }
        try await inTransaction(what) { connection, logger in
            // Marks first, then entries (and the totals row their trigger takes): the order the cleaner's
            // removal locks them in, so the two never deadlock.
            try await Self.endWrites(ending, on: connection, logger: logger)
            try await upsert(connection, logger)
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
        var storedBacked = Set<Digest>()
        if !backed.isEmpty {
            do {
                try await beginWriting(backed.map(\.1))
            } catch {
                let failure = StrataError.from(error)
                for entry in backed { results[entry.0] = .failure(failure) }
                backed = []
            }
        }
        if !backed.isEmpty {
            let written = await backingStore.writeBatch(backed.map { (digest: $0.1, data: $0.2) })
            var failed = Set<Digest>()
            for (entry, result) in zip(backed, written) {
                switch result {
                case .success:
                    stored.append((entry.0, entry.1, nil))
                    storedBacked.insert(entry.1)
                case .failure(let error):
                    results[entry.0] = .failure(error)
                    failed.insert(entry.1)
                }
            }
            // A digest named twice, stored once and refused once, is stored.
            failed.subtract(storedBacked)
            if !failed.isEmpty { try? await endWriting(Array(failed)) }
        }
        if stored.isEmpty { return results }
        do {
            try await record(
                stored.map { ($0.1, $0.2) }, endingWritesOf: Array(storedBacked), what: "recording \(stored.count) blobs in the index")
        } catch {
            let failure = StrataError.from(error)
            for entry in stored { results[entry.0] = .failure(failure) }
        }
        return results
    }

    /// Deletes what nobody is writing right now; a blob being written stays, as if written after the
    /// delete. Entries first: a failed backing delete then leaves an orphan blob, never an entry
    /// without a blob.
    public func delete(_ digests: [Digest]) async throws {
        let removed = try await removeEntries(digests, notAccessedSince: .distantFuture)
        do {
            // All of them, inline or not: a blob stored before `max-inline-blob-size` was raised is in
            // the storage though its size now says inline.
            if !removed.isEmpty { try await backingStore.delete(removed) }
        } catch {
            try? await finishDeleting(removed)
            throw error
        }
        try await finishDeleting(removed)
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

    /// Each window's transaction is retried on UNAVAILABLE with the same token: when a statement
    /// timeout hid a commit, the retry returns the blobs the first attempt removed (otherwise they would
    /// stay marked "being deleted" without being deleted: orphans, and writes of them stalled for the
    /// deletion lease).
    public func removeEntries(_ digests: [Digest], notAccessedSince cutoff: Date) async throws -> [Digest] {
        let token = UUID().uuidString
        // Few and short: enough to learn a lost answer; a database that stays down is the caller's
        // to wait out (the cleaner retries whole calls).
        let retry = RetryPolicy(maxAttempts: 3, baseDelay: .milliseconds(200), maxDelay: .seconds(1), budget: .seconds(10))
        return try await retry.run(isTransient: { StrataError.from($0).code == .unavailable }) { _ in
            try await removeEntries(digests, notAccessedSince: cutoff, token: token)
        }
    }

    /// `removeEntries` under a caller's token: idempotent, a second call with the same token (while
    /// the marks' lease holds) answers what the first removed.
    func removeEntries(_ digests: [Digest], notAccessedSince cutoff: Date, token: String) async throws -> [Digest] {
        let targets = digests.uniqued().filter { !$0.isEmpty }.sorted()
        var removed: [Digest] = []
        let lease = deletionLease.timeInterval
        for window in targets.windows(of: windowSize) {
            let keys = SQLDigestKeys(window)
            let gone = try await inTransaction("removing \(window.count) unused index entries") { connection, logger in
                // 0. What this token removed already (the call sent again after a commit whose answer
                //    was lost): still marked by it, and without an entry.
                let earlierRows = try await connection.query(
                    """
                    SELECT m.hash, m.size FROM strata_index_marks m
                    JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                      ON m.hash = w.hash AND m.size = w.size
                    WHERE m.deleting_token = \(token) AND m.deleting_until > now()
                      AND NOT EXISTS (SELECT 1 FROM strata_index i WHERE i.hash = m.hash AND i.size = m.size)
                    """, logger: logger)
                let earlier = try await earlierRows.digests()
                // 1. Mark "being deleted" the unused blobs stored in the backing storage that nobody is
                //    writing. A write starting now waits on these rows until the transaction ends, then
                //    sees the mark; a write under way keeps its row, so its blob is not claimed.
                let claimedRows = try await connection.query(
                    """
                    INSERT INTO strata_index_marks AS m (hash, size, deleting_until, deleting_token)
                    SELECT l.hash, l.size, now() + \(lease) * interval '1 second', \(token) FROM strata_index l
                    JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                      ON l.hash = w.hash AND l.size = w.size
                    WHERE l.accessed_at < \(cutoff) AND l.inline_data IS NULL
                    ORDER BY l.hash, l.size
                    ON CONFLICT (hash, size) DO UPDATE
                    SET deleting_until = EXCLUDED.deleting_until, deleting_token = EXCLUDED.deleting_token
                    WHERE (m.writing_until IS NULL OR m.writing_until <= now())
                      AND (m.deleting_until IS NULL OR m.deleting_until <= now())
                    RETURNING m.hash, m.size
                    """, logger: logger)
                let claimed = try await claimedRows.digests().sorted()
                let claimedKeys = SQLDigestKeys(claimed)
                // 2. Remove the entries of those, and of unused inline blobs (their bytes go with the
                //    row). SKIP LOCKED: a row being touched right now is in use, so it stays; the
                //    access-time check is repeated on the locked row, so a blob used after the cutoff
                //    keeps its entry.
                let rows = try await connection.query(
                    """
                    DELETE FROM strata_index i WHERE (i.hash, i.size) IN (
                        SELECT l.hash, l.size FROM strata_index l
                        JOIN unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                          ON l.hash = w.hash AND l.size = w.size
                        WHERE l.accessed_at < \(cutoff) AND (l.inline_data IS NOT NULL OR (l.hash, l.size) IN (
                            SELECT * FROM unnest(\(claimedKeys.hashes)::bytea[], \(claimedKeys.sizes)::int8[])
                        ))
                        ORDER BY l.hash, l.size FOR UPDATE OF l SKIP LOCKED
                    ) AND i.accessed_at < \(cutoff)
                    RETURNING i.hash, i.size
                    """, logger: logger)
                let gone = try await rows.digests()
                // 3. Claimed but kept (used meanwhile): no delete follows, so no mark either.
                let goneSet = Set(gone)
                let kept = claimed.filter { !goneSet.contains($0) }
                if !kept.isEmpty { try await Self.clearDeletionMarks(kept, on: connection, logger: logger) }
                return earlier + gone
            }
            removed.append(contentsOf: gone)
        }
        return removed
    }

    public func finishDeleting(_ digests: [Digest]) async throws {
        let targets = digests.uniqued().filter { !$0.isEmpty }.sorted()
        for window in targets.windows(of: windowSize) {
            try await run("clearing \(window.count) deletion marks") { connection, logger in
                try await Self.clearDeletionMarks(Array(window), on: connection, logger: logger)
            }
        }
        // Marks whose lease ran out (their holder crashed), a bounded number per call.
        try await run("sweeping expired index marks") { connection, logger in
            try await connection.execute(
                """
                DELETE FROM strata_index_marks WHERE ctid IN (
                    SELECT ctid FROM strata_index_marks
                    WHERE coalesce(writing_until, '-infinity') <= now() AND coalesce(deleting_until, '-infinity') <= now()
                    LIMIT 1000
                )
                """, logger: logger)
        }
    }

    /// Drops the marks rows of `digests` nobody is writing (a write that came after a deletion lease
    /// ran out cleared its deletion mark itself).
    private static func clearDeletionMarks(_ digests: [Digest], on connection: PostgresConnection, logger: Logger) async throws {
        let keys = SQLDigestKeys(digests)
        try await connection.execute(
            """
            DELETE FROM strata_index_marks m USING unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
            WHERE m.hash = w.hash AND m.size = w.size AND (m.writing_until IS NULL OR m.writing_until <= now())
            """, logger: logger)
    }

    // MARK: EnumerableIndex

    public func forEachEntryPage(pageSize: Int, _ body: ([IndexEntry]) async throws -> Void) async throws {
        try await readConnection.forEachKeyPage(table: "strata_index", timeColumn: "accessed_at", pageSize: pageSize, migrating: connection) {
            try await body($0.map { IndexEntry(digest: $0.digest, accessed: $0.time) })
        }
    }

    public func claimOrphans(_ digests: [Digest]) async throws -> [Digest] {
        // Whatever its size: a blob in the storage without an entry is an orphan, even one small enough
        // to be inlined now.
        let targets = digests.uniqued().filter { !$0.isEmpty }.sorted()
        let lease = deletionLease.timeInterval
        var claimed: [Digest] = []
        for window in targets.windows(of: windowSize) {
            let keys = SQLDigestKeys(window)
            let mine: [Digest] = try await inTransaction("claiming \(window.count) orphans") { connection, logger in
                let rows = try await connection.query(
                    """
                    INSERT INTO strata_index_marks AS m (hash, size, deleting_until)
                    SELECT w.hash, w.size, now() + \(lease) * interval '1 second'
                    FROM unnest(\(keys.hashes)::bytea[], \(keys.sizes)::int8[]) AS w(hash, size)
                    WHERE NOT EXISTS (SELECT 1 FROM strata_index i WHERE i.hash = w.hash AND i.size = w.size)
                    ORDER BY w.hash, w.size
                    ON CONFLICT (hash, size) DO UPDATE SET deleting_until = EXCLUDED.deleting_until
                    WHERE (m.writing_until IS NULL OR m.writing_until <= now())
                      AND (m.deleting_until IS NULL OR m.deleting_until <= now())
                    RETURNING m.hash, m.size
                    """, logger: logger)
                let marked = try await rows.digests()
                guard !marked.isEmpty else { return [] }
                // A write that finished between the statement's snapshot and its marks has recorded its
                // blob by now (this statement sees it): not an orphan.
                let markedKeys = SQLDigestKeys(marked)
                let indexedRows = try await connection.query(
                    """
                    SELECT i.hash, i.size FROM strata_index i
                    JOIN unnest(\(markedKeys.hashes)::bytea[], \(markedKeys.sizes)::int8[]) AS w(hash, size)
                      ON i.hash = w.hash AND i.size = w.size
                    """, logger: logger)
                let indexed = Set(try await indexedRows.digests())
                if !indexed.isEmpty { try await Self.clearDeletionMarks(Array(indexed), on: connection, logger: logger) }
                return marked.filter { !indexed.contains($0) }
            }
            claimed += mine
        }
        return claimed
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
                return try await rows.digests()
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
