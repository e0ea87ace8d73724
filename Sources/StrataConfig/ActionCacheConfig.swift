import Foundation
import StrataActionCache
import StrataCore
import StrataRemote
import StrataStorage

/// Action-cache tags that compose other caches, and `!remote-action-cache`.
extension Builder {
    /// `allow-updates` and `cache-failed-actions`, with one meaning for every cache that takes them.
    func updatePolicy(_ cache: any ActionCache, _ options: [String: ConfigNode]) throws(ConfigError) -> any ActionCache {
        let allowUpdates = try options["allow-updates"]?.bool() ?? true
        let cacheFailedActions = try options["cache-failed-actions"]?.bool() ?? true
        if allowUpdates && cacheFailedActions { return cache }
        return UpdatePolicyActionCache(cache, allowUpdates: allowUpdates, cacheFailedActions: cacheFailedActions)
    }

    /// `!disk-action-cache`: results as files under `path`, bounded by `max-size` (default 1G) and
    /// optionally `max-entries`, evicting the least recently used. Nothing is created here: the folder is
    /// made by the first update.
    mutating func diskActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(
            allowed: ["path", "max-size", "max-entries", "storage", "allow-updates", "cache-failed-actions"])
        guard let pathNode = options["path"] else { throw node.error("!disk-action-cache needs a path") }
        let path = try pathNode.string()
        guard !path.isEmpty else { throw pathNode.error("the path cannot be empty") }
        if let storage = options["storage"] { cacheStorages[node.identity] = try self.storage(storage) }
        let limits = DiskActionCache.Limits(
            maxBytes: try options["max-size"]?.size() ?? DiskActionCache.defaultMaxBytes,
            maxEntries: try options["max-entries"].map { node throws(ConfigError) in try node.int(minimum: 1) })
        let cache = DiskActionCache(path: path, limits: limits)
        checkReadiness(of: cache, "!disk-action-cache \(cache.root)", node)
        var summary = "!disk-action-cache at \(cache.root) (max-size \(describeBytes(limits.maxBytes))"
        if let maxEntries = limits.maxEntries { summary += ", max-entries \(maxEntries)" }
        cacheSummary.append(summary + ", evicting least recently used)")
        return try updatePolicy(cache, options)
    }

    mutating func writeOnceActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(allowed: ["action-cache"])
        guard let inner = options["action-cache"] else { throw node.error("!write-once-action-cache needs an action-cache") }
        return WriteOnceActionCache(try cache(inner))
    }

    mutating func shardedActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(
            allowed: ["shards", "allow-updates", "cache-failed-actions"], unsupported: ["cache-key-salt"])
        guard let shardsNode = options["shards"] else { throw node.error("!sharded-action-cache needs shards: a list of {name, cache}") }
        var shards: [ShardedActionCache.Shard] = []
        for entry in try shardsNode.sequence() {
            let fields = try entry.mapping(allowed: ["name", "cache", "weight"])
            guard let nameNode = fields["name"] else { throw entry.error("each shard needs a name") }
            let name = try nameNode.string()
            guard !name.isEmpty else { throw nameNode.error("a shard name cannot be empty") }
            guard !shards.contains(where: { $0.name == name }) else { throw nameNode.error("shard name \"\(name)\" is used twice") }
            guard let cacheNode = fields["cache"] else { throw entry.error("shard \"\(name)\" needs a cache") }
            let weight = try fields["weight"].map { node throws(ConfigError) in Double(try node.int(minimum: 1)) } ?? 1
            shards.append(.init(name: name, weight: weight, cache: try cache(cacheNode)))
        }
        guard !shards.isEmpty else { throw shardsNode.error("at least one shard is required") }
        return try updatePolicy(ShardedActionCache(shards: shards), options)
    }

    mutating func withCacheActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(allowed: ["cache", "fallback", "allow-updates", "cache-failed-actions"])
        guard let local = options["cache"] else { throw node.error("!with-cache-action-cache needs a cache") }
        guard let fallback = options["fallback"] else { throw node.error("!with-cache-action-cache needs a fallback") }
        return try updatePolicy(WithCacheActionCache(cache: try cache(local), fallback: try cache(fallback)), options)
    }

    mutating func mirroredActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(allowed: ["first", "second"])
        guard let first = options["first"] else { throw node.error("!mirrored-action-cache needs first") }
        guard let second = options["second"] else { throw node.error("!mirrored-action-cache needs second") }
        return MirroredActionCache(first: try cache(first), second: try cache(second))
    }

    mutating func remoteActionCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        let options = try node.mapping(allowed: Self.remoteChannelKeys)
        guard let urlNode = options["url"] else { throw node.error("!remote-action-cache needs a url, e.g. grpc://cache:50051") }
        let url = try urlNode.string()
        let channelOptions = try remoteChannelOptions(options, url: url)
        let cache: RemoteActionCache
        do {
            cache = try RemoteActionCache(url: url, options: channelOptions)
        } catch {
            throw urlNode.error(error.message)
        }
        backgroundServices.append(RemoteChannelService(channel: cache.channel))
        checkReadiness(of: cache.channel, "!remote-action-cache \(cache.endpoint)", node)
        return cache
    }
}
