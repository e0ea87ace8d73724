import Foundation
import StrataCore
import StrataStorage

/// One `cleanup:` entry: the index `strata cleanup` keeps under its watermarks and `strata janitor`
/// reconciles with its storage.
public struct CleanupTarget: Sendable {
    public var instanceName: String
    public var index: any IndexedBlobStore
    /// The index node's description, for logs, and its identity (entries naming one index share it).
    public var indexSummary: String
    public var indexIdentity: String
    public var policy: CleanupPolicy
    /// `sleep-interval` (Strata): seconds between passes; nil leaves it to the command line.
    public var sleepInterval: Duration?
    /// Where the entry is, for messages: "FILE:LINE".
    public var location: String
}

extension Builder {
    static let cleanupOptions: Set<String> = [
        "instance-name", "index", "batch-size", "high-watermark", "low-watermark", "high-blob-count-watermark",
        "low-blob-count-watermark", "only-if-unused-for", "large-blob-threshold", "large-blob-lifetime",
        "retry-limit", "sleep-interval",
    ]

    /// The `cleanup:` list, checked against the configured instances; each entry is an item of its own
    /// (its problem recorded, the others still checked).
    mutating func cleanupTargets(_ node: ConfigNode, instanceNames: Set<String>) -> [CleanupTarget] {
        var targets: [CleanupTarget] = []
        for entry in check({ _ throws(ConfigError) in try node.sequence() }) ?? [] {
            if let target = check({ builder throws(ConfigError) in try builder.cleanupTarget(entry, instanceNames: instanceNames) }) {
                targets.append(target)
            }
        }
        return targets
    }

    mutating func cleanupTarget(_ entry: ConfigNode, instanceNames: Set<String>) throws(ConfigError) -> CleanupTarget {
        let options = try entry.mapping(allowed: Self.cleanupOptions)
        guard let instanceNode = options["instance-name"] else {
            throw entry.error("a cleanup entry needs instance-name (\"\" for the default instance)")
        }
        let instanceName = try instanceNode.string()
        guard instanceNames.contains(instanceName) else {
            // An instance that failed before its names were read may be this one: reported already.
            if !instanceNamesComplete { throw instanceNode.followOn() }
            throw instanceNode.error("no instance is named \"\(instanceName)\"; instances: \(instanceNames.sorted().map { "\"\($0)\"" }.joined(separator: ", "))")
        }
        guard let indexNode = options["index"] else {
            throw entry.error("a cleanup entry needs index: an !redis-index (or !sql-index) storage, usually an alias such as *index")
        }
        // The index itself, not its metrics decorator: the janitor needs the index's own type.
        let store = try unmonitoredStorage(indexNode)
        // Its janitor deletes what it does not know from its storage: that storage must have no other writer.
        storageUses.append(StorageUse(
            storage: indexNode.identity, user: entry, description: "cleanup entry of instance \"\(instanceName)\"", writes: false))
        guard let index = store as? any IndexedBlobStore else {
            // Reported at the entry: an alias would point the message at the anchored storage.
            throw entry.error("index must be an index storage (!redis-index or !sql-index), not \(indexNode.applicationTag ?? "an untagged value"): only an index knows access times")
        }

        var policy = CleanupPolicy()
        policy.bytes = try watermarks(entry, options, high: "high-watermark", low: "low-watermark") { node throws(ConfigError) in
            try node.sizeOrZero()
        }
        policy.blobCount = try watermarks(entry, options, high: "high-blob-count-watermark", low: "low-blob-count-watermark") {
            node throws(ConfigError) in Int64(try node.int(minimum: 0))
        }
        guard policy.bytes != nil || policy.blobCount != nil else {
            throw entry.error("a cleanup entry needs high-watermark and low-watermark (bytes), or high-blob-count-watermark and low-blob-count-watermark")
        }
        if let batch = options["batch-size"] { policy.batchSize = try batch.size() }
        if let unused = options["only-if-unused-for"] { policy.onlyIfUnusedFor = try unused.timePeriod() }
        guard policy.onlyIfUnusedFor > index.refreshAccessTimeOlderThan else {
            throw (options["only-if-unused-for"] ?? entry).error(
                "only-if-unused-for (\(policy.onlyIfUnusedFor.timeInterval) s) must be longer than the index's "
                    + "refresh-accesstime-older-than (\(index.refreshAccessTimeOlderThan.timeInterval) s): a blob reported "
                    + "present without its access time refreshed could otherwise be deleted")
        }
        switch (options["large-blob-threshold"], options["large-blob-lifetime"]) {
        case (nil, nil): break
        case (let threshold?, let lifetime?):
            guard index is any EnumerableIndex else {
                throw threshold.error("large-blob-threshold needs an index that can list its entries (!redis-index or !sql-index)")
            }
            policy.largeBlobThreshold = try threshold.size()
            policy.largeBlobLifetime = try lifetime.timePeriod()
        case (let threshold?, nil): throw threshold.error("large-blob-threshold needs large-blob-lifetime too")
        case (nil, let lifetime?): throw lifetime.error("large-blob-lifetime needs large-blob-threshold too")
        }
        if let retries = options["retry-limit"] { policy.retryLimit = try retries.int(minimum: 0) }
        let sleep = try options["sleep-interval"]?.seconds()
        return CleanupTarget(
            instanceName: instanceName, index: index, indexSummary: storages[indexNode.identity]?.summary ?? "index",
            indexIdentity: indexNode.identity, policy: policy, sleepInterval: sleep,
            location: "\(entry.file):\(entry.line ?? 0)")
    }

    private func watermarks(
        _ entry: ConfigNode, _ options: [String: ConfigNode], high: String, low: String,
        _ value: (ConfigNode) throws(ConfigError) -> Int64
    ) throws(ConfigError) -> CleanupPolicy.Watermarks? {
        switch (options[high], options[low]) {
        case (nil, nil): return nil
        case (let highNode?, let lowNode?):
            let marks = CleanupPolicy.Watermarks(high: try value(highNode), low: try value(lowNode))
            guard marks.high > 0 else { throw highNode.error("\(high) must be positive") }
            guard marks.low <= marks.high else { throw lowNode.error("\(low) (\(marks.low)) is above \(high) (\(marks.high))") }
            return marks
        case (let highNode?, nil): throw highNode.error("\(high) needs \(low) too: the level a pass deletes down to")
        case (nil, let lowNode?): throw lowNode.error("\(low) needs \(high) too: the level that starts a pass")
        }
    }
}

extension ConfigNode {
    /// A byte size as `size()` reads it, or 0.
    func sizeOrZero() throws(ConfigError) -> Int64 {
        if applicationTag == nil, let value = node.int, value == 0 { return 0 }
        return try size()
    }

    /// BuildGrid's time period: a mapping of `weeks`, `days`, `hours`, `minutes` and `seconds`
    /// (numbers, all optional, added up).
    func timePeriod() throws(ConfigError) -> Duration {
        let units: [String: Double] = ["weeks": 604_800, "days": 86_400, "hours": 3600, "minutes": 60, "seconds": 1]
        let options = try mapping(allowed: Set(units.keys))
        guard !options.isEmpty else { throw error("a time period needs at least one of: weeks, days, hours, minutes, seconds") }
        var total = 0.0
        for (unit, node) in options {
            guard node.applicationTag == nil, case .scalar(let scalar) = node.node, let value = Double(scalar.string),
                  value.isFinite, value >= 0
            else { throw node.error("expected a number of \(unit), at least 0") }
            total += value * units[unit]!
        }
        guard let duration = Duration(settingSeconds: total) else {
            throw error("a time period must be at most 100 years")
        }
        return duration
    }
}
