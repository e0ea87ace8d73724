import Foundation
import StrataCore

/// A blob a storage holds, as its listing reports it.
public struct StoredBlob: Sendable, Hashable {
    public var digest: Digest
    /// When the storage last wrote it: the janitor leaves blobs younger than its grace period alone,
    /// since a write stores the blob before its index records it.
    public var modified: Date

    public init(digest: Digest, modified: Date) {
        self.digest = digest
        self.modified = modified
    }
}

/// A storage that can list what it holds, for the janitor: `!disk-storage` and `!s3-storage`.
public protocol ListableBlobStore: BlobStore {
    /// Calls `body` with every stored blob, a page of about `pageSize` at a time. Blobs written or
    /// deleted during the listing may be reported or not. Names that are not a digest's
    /// `storageName` (`{hash}_{size}`, `{function}/{hash}_{size}`) are skipped (they are not blobs of this storage).
    func forEachBlobPage(pageSize: Int, _ body: ([StoredBlob]) async throws -> Void) async throws
}
