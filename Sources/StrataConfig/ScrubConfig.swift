import Foundation
import StrataStorage

/// A storage `strata scrub` re-hashes: a listable persistent backend (`!disk-storage`, `!s3-storage`,
/// `!sql-storage`) and where its corrupt blobs are removed.
public struct ScrubTarget: Sendable {
    /// "disk storage /var/cache/strata", for the report.
    public var name: String
    /// The backend itself: the scrubber judges its bytes without the verifying wrapper.
    public var storage: any ListableBlobStore
    /// The index over the storage when there is one (the entry goes with the blob), else the storage.
    public var remover: any BlobStore
    public var indexed: Bool
}

extension Builder {
    /// One target per verified listable storage, removing through the index that sits directly on it.
    func scrubTargets() -> [ScrubTarget] {
        let indexes = storages.values.compactMap { $0.store as? any IndexedBlobStore }
        return scrubbable.map { entry in
            let index = indexes.first { ($0.backingStore as AnyObject) === (entry.store as AnyObject) }
            return ScrubTarget(name: entry.name, storage: entry.backend, remover: index ?? entry.store, indexed: index != nil)
        }.sorted { $0.name < $1.name }
    }
}
