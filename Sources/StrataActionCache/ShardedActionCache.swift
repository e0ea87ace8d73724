import Foundation
import StrataCore

/// Spreads action results over named shards by rendezvous hashing of the action's hash, the same
/// choice as `ShardedBlobStore` (and BuildGrid's sharded action cache); like it, by the hash alone,
/// and the shard keeps two functions' entries with the same hex apart.
public struct ShardedActionCache: ActionCache {
    public struct Shard: Sendable {
        public var name: String
        public var weight: Double
        public var cache: any ActionCache

        public init(name: String, weight: Double = 1, cache: any ActionCache) {
            self.name = name
            self.weight = weight
            self.cache = cache
        }
    }

    public let shards: [Shard]
    private let hashing: RendezvousHashing

    public init(shards: [Shard]) {
        self.shards = shards
        self.hashing = RendezvousHashing(shards.map { .init(name: $0.name, weight: $0.weight) })
    }

    public var allowsUpdates: Bool { shards.allSatisfy(\.cache.allowsUpdates) }

    public func shardIndex(_ action: Digest) -> Int { hashing.owner(of: action.hash) }

    public func get(_ action: Digest) async throws -> ActionResult? {
        try await shards[shardIndex(action)].cache.get(action)
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        try await shards[shardIndex(action)].cache.update(action, result)
    }

    public func remove(_ action: Digest) async throws {
        try await shards[shardIndex(action)].cache.remove(action)
    }
}
