import Foundation
import StrataCore
import StrataStorage

extension Builder {
    /// `!disk-storage`: files under `path`; with `max-size`, a byte budget that refuses writes past it
    /// (RESOURCE_EXHAUSTED) or, with `evict: lru`, evicts the least recently used blobs; `verify-reads`
    /// (see `verifying`); `compression: zstd` (with `compression-level`) stores new blobs compressed.
    mutating func diskStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: ["path", "sync", "max-size", "evict", "verify-reads", "compression", "compression-level"])
        guard let pathNode = options["path"] else { throw node.error("!disk-storage needs a path") }
        let path = try pathNode.string()
        let sync = try options["sync"]?.bool() ?? true
        var budget: DiskBlobStore.Budget?
        var budgetDescription = ""
        if let maxSize = options["max-size"] {
            let resolved = try maxSize.diskBudget(storagePath: path)
            budget = DiskBlobStore.Budget(maxBytes: resolved.bytes)
            budgetDescription = resolved.description
        }
        if let evict = options["evict"] {
            switch try evict.string() {
            case "lru":
                guard budget != nil else { throw evict.error("evict: lru needs a max-size to evict down to") }
                budget?.evictLeastRecentlyUsed = true
            case "none": break
            case let other: throw evict.error("unknown eviction \"\(other)\": use lru (evict least recently used blobs) or none (refuse writes past max-size)")
            }
        }
        let compressionLevel = try compressionLevel(options)
        // Creates and cleans nothing yet: `strata serve` prepares it (Configuration.prepare()).
        let store = DiskBlobStore(path: path, sync: sync, budget: budget, compressionLevel: compressionLevel)
        if budget != nil { usageReporters[node.identity] = store }
        preparations.append(.init(backend: store, file: node.file, line: node.line, path: node.path))
        checkReadiness(of: store, "!disk-storage \(path)", node)
        var summary = "!disk-storage at \(path)"
        if let budget {
            summary += " (max-size \(budgetDescription), \(budget.evictLeastRecentlyUsed ? "evicting least recently used" : "refusing writes") past it)"
        }
        if let compressionLevel { summary += ", storing new blobs zstd-compressed (level \(compressionLevel))" }
        return (try verifying(store, name: "disk storage \(path)", options), summary)
    }

    /// `compression: zstd | none` of `!disk-storage`, `!s3-storage` and `!sql-storage` (none by default,
    /// so existing folders, buckets and tables, and BuildGrid's layouts, are untouched) and
    /// `compression-level` (libzstd's levels; 3 by default): the zstd level, or nil.
    func compressionLevel(_ options: [String: ConfigNode]) throws(ConfigError) -> Int32? {
        var compressed = false
        if let compression = options["compression"] {
            switch try compression.string() {
            case "zstd": compressed = true
            case "none": break
            case let other: throw compression.error("unknown compression \"\(other)\": use zstd (store new blobs zstd-compressed) or none")
            }
        }
        guard let levelNode = options["compression-level"] else { return compressed ? DiskBlobStore.defaultCompressionLevel : nil }
        guard compressed else { throw levelNode.error("compression-level needs compression: zstd") }
        let levels = DiskBlobStore.compressionLevels
        let level = try levelNode.int(minimum: Int(levels.lowerBound))
        guard level <= Int(levels.upperBound) else {
            throw levelNode.error("compression-level \(level) is not a zstd level (\(levels.lowerBound) to \(levels.upperBound))")
        }
        return Int32(level)
    }

    /// A persistent backend wrapped in the `VerifyingBlobStore` that keeps it from serving a damaged
    /// copy; `verify-reads: false` skips hashing whole-blob reads (lengths are still checked), for a
    /// trusted local disk where the hashing costs more than it is worth.
    /// A listable one is recorded for `strata scrub`.
    mutating func verifying<Backend: BlobStore>(
        _ backend: Backend, name: String, _ options: [String: ConfigNode],
        writeSkipsStoredCopy: @escaping @Sendable (Digest) -> Bool = { _ in true }
    ) throws(ConfigError) -> VerifyingBlobStore<Backend> {
        let verifyReads = try options["verify-reads"]?.bool() ?? true
        let store = VerifyingBlobStore(backend, name: name, verifyReads: verifyReads, writeSkipsStoredCopy: writeSkipsStoredCopy)
        if let listable = backend as? any ListableBlobStore { scrubbable.append((store, listable, name)) }
        return store
    }
}
