import Foundation
import StrataCore
import StrataStorage

extension Builder {
    /// `!disk-storage`: files under `path`; with `max-size`, a byte budget that refuses writes past it
    /// (RESOURCE_EXHAUSTED) or, with `evict: lru`, evicts the least recently used blobs.
    mutating func diskStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: ["path", "sync", "max-size", "evict"])
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
        // Creates and cleans nothing yet: `strata serve` prepares it (Configuration.prepare()).
        let store = DiskBlobStore(path: path, sync: sync, budget: budget)
        preparations.append(.init(backend: store, file: node.file, line: node.line, path: node.path))
        var summary = "!disk-storage at \(path)"
        if let budget {
            summary += " (max-size \(budgetDescription), \(budget.evictLeastRecentlyUsed ? "evicting least recently used" : "refusing writes") past it)"
        }
        return (store, summary)
    }
}
