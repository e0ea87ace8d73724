import Foundation
import Logging
import StrataActionCache
import StrataCore

/// Action results in Redis, one string key per action, laid out as BuildGrid 0.9.1's
/// `!redis-action-cache` so that its Redis is served as is: key `action-cache.[salt.]hash_size`, value
/// the ActionResult or the Digest of its blob in the CAS (see `ActionCacheEntries`). That is a SHA-256
/// action's key; another digest function's action has its function before the hash,
/// `action-cache.[salt.]{function}/hash_size` (`Digest.storageName`), so the same hex under two
/// functions is two entries.
///
/// Keys never expire here: Redis's own eviction policy (e.g. `allkeys-lru`) bounds the cache, as for
/// BuildGrid. A value that is not a usable entry is answered as absent and deleted, so the action runs
/// again and its new result replaces it.
public struct RedisActionCache: ActionCache {
    public let client: RedisClient
    public let entries: ActionCacheEntries
    /// BuildGrid's `cache-key-salt`: caches with the same salt share entries. Empty means none.
    public let keySalt: String?
    private let logger: Logger

    public init(client: RedisClient, entries: ActionCacheEntries, keySalt: String? = nil,
                logger: Logger = Logger(label: "strata.action-cache.redis")) {
        self.client = client
        self.entries = entries
        self.keySalt = keySalt
        self.logger = logger
    }

    public func key(for action: Digest) -> String {
        guard let keySalt, !keySalt.isEmpty else { return "action-cache.\(action.storageName)" }
        return "action-cache.\(keySalt).\(action.storageName)"
    }

    public func get(_ action: Digest) async throws -> ActionResult? {
        let key = key(for: action)
        let command = RedisCommand("GET", key)
        let value: Data
        switch try await client.pipeline([command])[0] {
        case .null:
            return nil
        case .bulk(let data):
            value = data
        case .error(let message) where message.hasPrefix("WRONGTYPE"):
            return await drop(action, key, because: "it is not a string key")
        case let reply:
            _ = try client.checked(reply, command)
            throw StrataError.internal("Redis at \(client.endpoint) answered GET \(key) with \(reply)")
        }
        switch try await entries.decode(value, for: action) {
        case .unusable(let problem):
            return await drop(action, key, because: problem)
        case .result(let result, let migratedValue):
            if let migratedValue {
                do {
                    try await set(key, migratedValue)
                } catch {
                    logger.warning("Redis at \(client.endpoint): cannot migrate action cache entry \(key) to \(entries.entryType): \(error)")
                }
            }
            return result
        }
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        try await set(key(for: action), try await entries.value(for: action, result))
    }

    public func remove(_ action: Digest) async throws {
        try await client.send("DEL", key(for: action))
    }

    private func set(_ key: String, _ value: Data) async throws {
        try await client.send(RedisCommand(binary: [Data("SET".utf8), Data(key.utf8), value]))
    }

    private func drop(_ action: Digest, _ key: String, because problem: String) async -> ActionResult? {
        logger.warning("Redis at \(client.endpoint): action cache entry \(key) is unusable and is removed: \(problem)")
        do {
            try await remove(action)
        } catch {
            logger.warning("Redis at \(client.endpoint): cannot remove unusable action cache entry \(key): \(error)")
        }
        return nil
    }
}
