import StrataStorage

/// A storage node as the builder saw it: where it is, and the storage nodes it was built from, in the
/// order it asked for them (aliases included, so a shared storage appears under each user).
struct StorageShape {
    let node: ConfigNode
    var children: [String] = []
}

/// Something that reaches a storage from outside the storage graph: a `!cas` or `!bytestream`, an
/// action cache that keeps ActionResults in its storage, or a cleanup entry (whose janitor deletes
/// from its index's storage).
struct StorageUse {
    /// The identity of the storage node it names.
    let storage: String
    /// Where a refusal points: the service or entry (an alias would point at the anchored storage).
    let user: ConfigNode
    let description: String
    /// Whether blobs are written through it (a read-only service writes none).
    let writes: Bool
}

/// The configurations refused at load time because they lose acknowledged blobs.
extension Builder {
    /// "!disk-storage at FILE:LINE".
    func describe(_ identity: String) -> String {
        guard let node = shapes[identity]?.node else { return "a storage" }
        return "\(node.applicationTag ?? "a storage") at \(node.file):\(node.line ?? 0)"
    }

    /// The storage at or below `identity` that deletes blobs by itself (`!lru-storage`, `!disk-storage`
    /// with `evict: lru`) such that a blob written through `identity` can vanish, or nil.
    func evictingStorage(at identity: String) -> String? {
        guard let shape = shapes[identity], let store = storages[identity]?.store.unwrapped else { return nil }
        if store is LRUBlobStore { return identity }
        if let disk = store as? DiskBlobStore, disk.budget?.evictLeastRecentlyUsed == true { return identity }
        switch shape.node.applicationTag {
        case "!with-cache-storage":
            // Built cache first, then fallback: a blob the cache drops is still read from the fallback.
            return shape.children.last.flatMap(evictingStorage(at:))
        case "!replicated-storage":
            // A blob one replica lost is read from (and repaired by) another: lost only if all can lose it.
            let evicting = shape.children.map(evictingStorage(at:))
            return evicting.allSatisfy { $0 != nil } ? evicting.first ?? nil : nil
        default:
            return shape.children.lazy.compactMap(evictingStorage(at:)).first
        }
    }

    /// An index answers FindMissingBlobs from its own records: over a storage that drops blobs by
    /// itself, it reports evicted blobs present, clients skip uploading them, and builds fail.
    func refuseEvictingStorage(below index: ConfigNode) throws(ConfigError) {
        guard let backing = shapes[index.identity]?.children, let evicting = backing.lazy.compactMap(evictingStorage(at:)).first
        else { return }
        throw index.error(
            "\(index.applicationTag ?? "an index") over a storage that deletes blobs by itself (\(describe(evicting))): "
                + "the index would keep reporting evicted blobs present, so clients would not upload them again; "
                + "index a storage that keeps its blobs (!disk-storage without evict: lru, !s3-storage, !sql-storage) "
                + "and evict through the index with `strata cleanup`")
    }

    /// The janitor of an index directly over a listable storage deletes every blob of that storage the
    /// index does not know (after its grace period). So such a storage must be written through that index
    /// only: a service or action cache writing to it another way, or a second index over it (measured:
    /// two `!redis-index` shards over one `!disk-storage`, and the janitor deleted 200 of 200 blobs),
    /// loses acknowledged blobs. Read-only services write nothing and may bypass the index.
    func refuseWritesPastTheJanitorsIndex() throws(ConfigError) {
        struct Reach {
            let use: StorageUse
            /// The nearest index above the storage on the way from the use, and whether the storage is
            /// that index's own backing storage (then its janitor lists it).
            let index: String?
            let listedByIndex: Bool
        }
        var reaches: [String: [Reach]] = [:]
        var leaves: [String: String] = [:]
        func walk(_ identity: String, index: String?, parentIsIndex: Bool, use: StorageUse, path: Set<String>) {
            guard !path.contains(identity), let shape = shapes[identity], let store = storages[identity]?.store.unwrapped else { return }
            if store is any ListableBlobStore {
                // One folder is one storage, however many nodes name it.
                let key = (store as? DiskBlobStore).map { "disk:\($0.root.path)" } ?? identity
                leaves[key] = leaves[key] ?? identity
                reaches[key, default: []].append(Reach(use: use, index: index, listedByIndex: parentIsIndex))
            }
            let isIndex = store is any IndexedBlobStore
            for child in shape.children {
                walk(child, index: isIndex ? identity : index, parentIsIndex: isIndex, use: use, path: path.union([identity]))
            }
        }
        for use in storageUses { walk(use.storage, index: nil, parentIsIndex: false, use: use, path: []) }

        for (key, found) in reaches.sorted(by: { $0.key < $1.key }) {
            let leaf = describe(leaves[key]!)
            let janitors = found.filter(\.listedByIndex).compactMap(\.index).uniqued()
            guard let janitorIndex = janitors.first else { continue }
            if janitors.count > 1, let second = shapes[janitors[1]]?.node {
                throw second.error(
                    "\(second.applicationTag ?? "this index") and the \(describe(janitors[0])) both index \(leaf): "
                        + "the janitor of each deletes the blobs the other recorded, as orphans; "
                        + "use one index over this storage (an alias such as *index), or give each index its own storage")
            }
            if let bypass = found.first(where: { $0.use.writes && $0.index != janitorIndex }) {
                let way = bypass.index.map { "through the \(describe($0))" } ?? "directly"
                throw bypass.use.user.error(
                    "\(bypass.use.description) writes to \(leaf) \(way), not through the \(describe(janitorIndex)) that "
                        + "indexes it: the janitor deletes blobs that index does not know as orphans, so these writes "
                        + "would be lost; use the index as this storage (an alias such as *index)")
            }
        }
    }
}

extension Array where Element == String {
    fileprivate func uniqued() -> [String] {
        var seen = Set<String>()
        return filter { seen.insert($0).inserted }
    }
}
