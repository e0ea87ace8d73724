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
    /// deleted during the listing may be reported or not. Names that are not `{hash}_{size}` of a
    /// known digest function are skipped (they are not blobs of this storage).
    func forEachBlobPage(pageSize: Int, _ body: ([StoredBlob]) async throws -> Void) async throws
}

extension Digest {
    /// The digest a storage key or file name `{hash}_{size}` names, or nil for any other name.
    public init?(storageName name: some StringProtocol) {
        guard let separator = name.lastIndex(of: "_"), let size = Int64(name[name.index(after: separator)...]), size >= 0
        else { return nil }
        let hash = String(name[..<separator])
        guard let function = try? DigestFunction.resolve(protoValue: 0, hash: hash),
              let digest = try? Digest(hash: hash, sizeBytes: size, function: function)
        else { return nil }
        self = digest
    }
}
