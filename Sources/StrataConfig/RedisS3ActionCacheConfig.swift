import StrataActionCache
import StrataCore
import StrataRedis
import StrataS3
import StrataStorage

/// `!redis-action-cache` and `!s3action-cache` (also spelled `!s3-action-cache`): BuildGrid 0.9.1's
/// options, defaults and key layouts, so an existing BuildGrid Redis or bucket is served as is.
extension Builder {
    mutating func redisActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(allowed: [
            "storage", "redis", "allow-updates", "cache-failed-actions", "entry-type", "migrate-entries", "cache-key-salt",
        ])
        guard let redisNode = options["redis"] else { throw node.error("!redis-action-cache needs redis: a !redis-connection") }
        let entries = try actionCacheEntries(node, options)
        let cache = RedisActionCache(
            client: try redisConnection(redisNode), entries: entries,
            keySalt: try options["cache-key-salt"]?.string())
        return try updatePolicy(cache, options)
    }

    mutating func s3ActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(allowed: [
            "storage", "bucket", "endpoint", "access-key", "secret-key", "region",
            "allow-updates", "cache-failed-actions", "entry-type", "migrate-entries", "cache-key-salt",
        ])
        let bucket = try s3Bucket(node, options)
        let client = S3Client(try s3ClientConfiguration(node, options, connectTimeoutSeconds: 10))
        let entries = try actionCacheEntries(node, options)
        let cache = S3ActionCache(
            client: client, bucket: bucket, entries: entries, keySalt: try options["cache-key-salt"]?.string())
        checkReadiness(of: cache, "\(node.applicationTag ?? "!s3action-cache") bucket \(bucket) at \(client.configuration.endpoint)", node)
        return try updatePolicy(cache, options)
    }

    /// `storage`, `entry-type` and `migrate-entries`. The storage is required, as in BuildGrid: entries
    /// of type action-result-digest keep their ActionResult there, and whatever the entry type, an
    /// existing entry of that kind is read from it. It is also the CAS the results are checked against.
    private mutating func actionCacheEntries(
        _ node: ConfigNode, _ options: [String: ConfigNode]
    ) throws(ConfigError) -> ActionCacheEntries {
        guard let storageNode = options["storage"] else {
            throw node.error("\(node.applicationTag ?? "this action cache") needs a storage: the CAS its results refer to")
        }
        let cas = try storage(storageNode)
        cacheStorages[node.identity] = cas
        // Entries of type action-result-digest write their ActionResult there.
        storageUses.append(StorageUse(
            storage: storageNode.identity, user: node, description: "\(node.applicationTag ?? "action cache")", writes: true))
        var entryType = ActionCacheEntryType.actionResultDigest
        if let typeNode = options["entry-type"] {
            let name = try typeNode.string()
            // BuildGrid compares lower-cased.
            guard let parsed = ActionCacheEntryType(rawValue: name.lowercased()) else {
                let known = ActionCacheEntryType.allCases.map(\.rawValue).joined(separator: " or ")
                throw typeNode.error("unknown entry-type \"\(name)\": expected \(known)")
            }
            entryType = parsed
        }
        return ActionCacheEntries(
            entryType: entryType, migrateEntries: try options["migrate-entries"]?.bool() ?? false, cas: cas)
    }
}
