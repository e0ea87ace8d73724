/// How full a storage that keeps blobs itself is: for the monitoring gauges and `/status`. A field is
/// nil where the storage does not know it (a disk store without a budget does not count its bytes).
public struct StorageUsage: Sendable, Hashable {
    public var bytes: Int64?
    public var blobs: Int?
    public var limitBytes: Int64?
    /// Blobs evicted to make room since start.
    public var evictions: Int64?

    public init(bytes: Int64? = nil, blobs: Int? = nil, limitBytes: Int64? = nil, evictions: Int64? = nil) {
        self.bytes = bytes
        self.blobs = blobs
        self.limitBytes = limitBytes
        self.evictions = evictions
    }
}

/// A storage that can say how full it is (memory, disk).
public protocol StorageUsageReporting: Sendable {
    var storageUsage: StorageUsage { get }
}

extension LRUBlobStore: StorageUsageReporting {
    public var storageUsage: StorageUsage {
        let (bytes, blobs, evictions) = lruState
        return StorageUsage(bytes: bytes, blobs: blobs, limitBytes: capacityBytes, evictions: evictions)
    }
}

extension DiskBlobStore: StorageUsageReporting {
    public var storageUsage: StorageUsage {
        guard let budget else { return StorageUsage() }
        let (bytes, blobs) = budgetState
        return StorageUsage(bytes: bytes, blobs: blobs, limitBytes: budget.maxBytes, evictions: evictionCount)
    }
}
