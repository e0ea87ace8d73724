import Foundation
import ServiceLifecycle
import StrataRedis
import StrataStorage

extension Builder {
    /// `!redis-connection`: one client (a pool of connections) per YAML node, shared through aliases.
    mutating func redisConnection(_ node: ConfigNode) throws(ConfigError) -> RedisClient {
        if let built = objects[node.identity] as? RedisClient { return built }
        return try once(node) { builder throws(ConfigError) in try builder.buildRedisConnection(node) }
    }

    private mutating func buildRedisConnection(_ node: ConfigNode) throws(ConfigError) -> RedisClient {
        try requireTag(node, "!redis-connection")
        let options = try node.mapping(
            allowed: ["host", "port", "password", "db", "retries", "protocol", "pool-size", "timeout"],
            unsupported: ["dns-srv-record", "sentinel-master-name"])
        var configuration = RedisConfiguration()
        guard let host = options["host"] else {
            throw node.error("!redis-connection needs a host (and a port, 6379 by default)")
        }
        configuration.host = try host.string()
        guard !configuration.host.isEmpty else { throw host.error("the host is empty") }
        if let port = options["port"] {
            configuration.port = try port.int(minimum: 1)
            guard configuration.port <= 65535 else { throw port.error("a port is at most 65535") }
        }
        if let password = options["password"] { configuration.password = try password.string() }
        if let db = options["db"] { configuration.database = try db.int(minimum: 0) }
        if let retries = options["retries"] { configuration.retries = try retries.int(minimum: 0) }
        if let poolSize = options["pool-size"] { configuration.poolSize = try poolSize.int(minimum: 1) }
        if let timeout = options["timeout"] { configuration.timeout = try timeout.seconds() }
        if let version = options["protocol"] {
            // hiredis 0.14 speaks RESP2 only.
            guard try version.int(minimum: 2) == 2 else { throw version.error("only protocol 2 (RESP2) is supported") }
        }
        let client = RedisClient(configuration)
        objects[node.identity] = client
        checkReadiness(of: client, "!redis-connection \(client.endpoint)", node)
        backgroundServices.append(RedisClientService(client: client))
        return client
    }

    /// `!redis-index`: an index of `storage`'s blobs in the Redis of `redis`.
    mutating func redisIndex(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: ["storage", "redis", "prefix", "refresh-accesstime-older-than"])
        guard let storageNode = options["storage"] else { throw node.error("!redis-index needs a storage") }
        guard let redisNode = options["redis"] else { throw node.error("!redis-index needs redis: a !redis-connection") }
        let storage = try self.storage(storageNode)
        let client = try redisConnection(redisNode)
        let prefix = try options["prefix"]?.string() ?? "strata:index:"
        let refresh = try options["refresh-accesstime-older-than"]?.seconds(allowZero: true) ?? .zero
        let index = RedisIndex(backingStore: storage, client: client, prefix: prefix, refreshAccessTimeOlderThan: refresh)
        return (index, "!redis-index at \(client.endpoint) (prefix \"\(prefix)\")")
    }
}


/// Keeps a Redis client's threads for as long as the server runs and closes its connections after.
struct RedisClientService: Service {
    let client: RedisClient

    func run() async throws {
        try? await gracefulShutdown()
        await client.shutdown()
    }
}
