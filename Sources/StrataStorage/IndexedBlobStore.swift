import Foundation
import Logging
import StrataCore

/// A storage decorator that records, for every blob of a backing storage, its size and when it was
/// last used (written, read, or reported present by `findMissing`). The cleanup job reads it to find
/// the least-recently used blobs; `!sql-index` and `!redis-index` implement it.
///
/// Ordering rules every index keeps:
/// - `write` stores in the backing storage first and records the blob in the index after, so the index
///   never names a blob the storage lacks because of a write.
/// - `delete` (and `removeEntries`) removes the index entry first; the backing delete follows. A failed
///   backing delete leaves an orphan blob (harmless, found by the janitor), never an entry without a blob.
/// - When a read finds the index naming a blob the backing storage has lost, the entry is dropped
///   (self-healing) and the read answers NOT_FOUND; also when the loss shows while the body streams
///   (a copy `VerifyingBlobStore` found corrupt and removed).
///
/// Writes and deletes of one blob never overlap, through two marks the index keeps per blob:
/// - a write marks the blob "being written" before its backing write and clears the mark when it
///   records the blob; it waits first while the blob is marked "being deleted";
/// - removing an entry for deletion (`removeEntries`, `claimOrphans`) skips blobs being written and
///   marks the others "being deleted" until `finishDeleting`.
/// Without them, a client told "missing" after the entry was removed could upload the blob again while
/// the old copy still exists: the storage skips a write of a blob it has, the delete then removes it,
/// and an acknowledged upload is lost. Both marks are leases (`IndexLeases`), so a crashed writer or
/// cleaner blocks the other side for a bounded time only.
public protocol IndexedBlobStore: BlobStore {
    /// The storage whose blobs this index describes.
    var backingStore: any BlobStore { get }

    /// A use of a blob last used more recently than this does not refresh its access time; a cleanup
    /// protection window (`only-if-unused-for`) must be longer, or a blob reported present without a
    /// refresh could be deleted.
    var refreshAccessTimeOlderThan: Duration { get }

    /// Bytes and blobs the index currently records.
    func totals() async throws -> IndexTotals

    /// Up to `limit` entries last accessed before `cutoff`, least recently accessed first.
    func leastRecentlyAccessed(before cutoff: Date, limit: Int) async throws -> [IndexEntry]

    /// Removes the index entries of `digests` that have still not been accessed since `cutoff` and are
    /// not being written, checking and removing atomically so that a blob used meanwhile keeps its
    /// entry, and marks each removed blob "being deleted". Returns the digests whose entries were
    /// removed; the caller deletes those from `backingStore`, then calls `finishDeleting` with them.
    func removeEntries(_ digests: [Digest], notAccessedSince cutoff: Date) async throws -> [Digest]

    /// Clears the "being deleted" marks of `digests` (set by `removeEntries` or `claimOrphans`) once
    /// their backing delete is over, successful or not: writes waiting for them go ahead.
    func finishDeleting(_ digests: [Digest]) async throws
}

/// How long the marks that keep a blob's writes and deletes apart hold when nobody clears them (their
/// holder crashed).
public enum IndexLeases {
    /// A write's mark: longer than any upload should take. A crashed writer keeps its blob from being
    /// deleted for this long, which costs nothing but space.
    public static let writing: Duration = .seconds(3600)
    /// A delete's mark: longer than one backing delete of a batch should take. A crashed cleaner makes
    /// writes of its batch's blobs wait this long at most.
    public static let deleting: Duration = .seconds(120)
}

/// Calls `attempt` with the digests not yet marked "being written" until it has marked them all:
/// `attempt` marks those it can and returns the others (being deleted right now). Waits 2 ms, 4 ms…
/// at most 100 ms between attempts; the deletion lease bounds the wait.
public func waitingOutDeletions(_ digests: [Digest], _ attempt: ([Digest]) async throws -> [Digest]) async throws {
    var pending = digests
    var pause = 2
    while !pending.isEmpty {
        pending = try await attempt(pending)
        if pending.isEmpty { return }
        try await Task.sleep(for: .milliseconds(pause))
        pause = min(pause * 2, 100)
    }
}

/// Refreshing access times is bookkeeping for the cleaner: when the index cannot do it (Redis
/// restarting, a row locked), the read it accompanies has its bytes and must still answer them. The
/// failure is logged instead, at warning and at most once a minute per index: the cost is only that
/// the cleaner may see those blobs as older than they are.
public final class AccessTimeRefreshFailures: Sendable {
    private let index: String
    private let logger: Logger
    private let rateLimit = WarningRateLimit(interval: .seconds(60))

    public init(index: String, logger: Logger) {
        self.index = index
        self.logger = logger
    }

    /// Logs (rate-limited) that `what` failed with `error`; the caller goes on with its answer.
    public func report(_ error: any Error, _ what: String) {
        guard let heldBack = rateLimit.admit() else { return }
        let more = heldBack > 0 ? " (and \(heldBack) more such failures since the last warning)" : ""
        logger.warning(
            "\(index): \(what) failed; the read is answered anyway, but the cleaner may take these blobs for older than they are\(more): \(StrataError.from(error).message)")
    }
}

public struct IndexTotals: Sendable, Hashable {
    public var bytes: Int64
    public var blobs: Int64

    public init(bytes: Int64, blobs: Int64) {
        self.bytes = bytes
        self.blobs = blobs
    }
}

public struct IndexEntry: Sendable, Hashable {
    public var digest: Digest
    public var accessed: Date

    public init(digest: Digest, accessed: Date) {
        self.digest = digest
        self.accessed = accessed
    }
}

/// An index the janitor can walk and query without side effects; `!redis-index` and `!sql-index` implement it.
public protocol EnumerableIndex: IndexedBlobStore {
    /// Calls `body` with every entry, a page of about `pageSize` at a time, in no particular order. An
    /// entry added or removed during the walk may be reported or not, and may be reported twice.
    func forEachEntryPage(pageSize: Int, _ body: ([IndexEntry]) async throws -> Void) async throws

    /// Whether each digest has an entry, in order, without refreshing any access time (a janitor that
    /// looked would otherwise keep every blob alive).
    func hasEntries(_ digests: [Digest]) async throws -> [Bool]

    /// Of `digests` (blobs found in `backingStore`), marks "being deleted" and returns those the index
    /// has no entry for and nobody is writing: the janitor deletes exactly these from the storage,
    /// then calls `finishDeleting` with them.
    func claimOrphans(_ digests: [Digest]) async throws -> [Digest]

    /// Of `digests`, those whose blob, when indexed, lives in `backingStore`: an index that holds small
    /// blobs itself (`!sql-index` with `max-inline-blob-size`) leaves those out, since the storage
    /// lacking them does not make their entries dangling.
    func storedInBackingStore(_ digests: [Digest]) -> [Digest]
}

extension EnumerableIndex {
    public func storedInBackingStore(_ digests: [Digest]) -> [Digest] { digests }
}
