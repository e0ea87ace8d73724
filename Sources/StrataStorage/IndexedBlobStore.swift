import Foundation
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
///   (self-healing) and the read answers NOT_FOUND.
public protocol IndexedBlobStore: BlobStore {
    /// The storage whose blobs this index describes.
    var backingStore: any BlobStore { get }

    /// Bytes and blobs the index currently records.
    func totals() async throws -> IndexTotals

    /// Up to `limit` entries last accessed before `cutoff`, least recently accessed first.
    func leastRecentlyAccessed(before cutoff: Date, limit: Int) async throws -> [IndexEntry]

    /// Removes the index entries of `digests` that have still not been accessed since `cutoff`,
    /// checking and removing atomically so that a blob used meanwhile keeps its entry. Returns the
    /// digests whose entries were removed; the caller deletes those from `backingStore`.
    func removeEntries(_ digests: [Digest], notAccessedSince cutoff: Date) async throws -> [Digest]
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

    /// Of `digests`, those whose blob, when indexed, lives in `backingStore`: an index that holds small
    /// blobs itself (`!sql-index` with `max-inline-blob-size`) leaves those out, since the storage
    /// lacking them does not make their entries dangling.
    func storedInBackingStore(_ digests: [Digest]) -> [Digest]
}

extension EnumerableIndex {
    public func storedInBackingStore(_ digests: [Digest]) -> [Digest] { digests }
}
