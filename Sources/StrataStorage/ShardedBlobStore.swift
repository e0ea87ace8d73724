import Foundation
import StrataCore

/// Spreads blobs over named shards by rendezvous hashing of the digest's hash (see
/// `RendezvousHashing`): with equal weights each blob lands on the shard BuildGrid 0.9.1 would pick.
/// Adding a shard moves only the blobs it wins; batch calls are split per shard and run concurrently.
/// The shard is chosen by the hash alone, whatever the digest function (SHA-256 blobs stay where they
/// are): two functions' blobs with the same hex land on one shard, which stores them apart.
public struct ShardedBlobStore: BlobStore {
    public struct Shard: Sendable {
        public var name: String
        public var weight: Double
        public var store: any BlobStore

        public init(name: String, weight: Double = 1, store: any BlobStore) {
            self.name = name
            self.weight = weight
            self.store = store
        }
    }

    public let shards: [Shard]
    private let hashing: RendezvousHashing

    /// `shards` must be non-empty with distinct names and positive weights (the config checks).
    public init(shards: [Shard]) {
        self.shards = shards
        self.hashing = RendezvousHashing(shards.map { .init(name: $0.name, weight: $0.weight) })
    }

    public var maximumBlobSize: Int64? {
        let limits = shards.compactMap(\.store.maximumBlobSize)
        return limits.count == shards.count ? limits.min() : nil
    }

    /// The index of the shard that holds `digest`.
    public func shardIndex(_ digest: Digest) -> Int { hashing.owner(of: digest.hash) }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let unique = digests.uniqued()
        let groups = Dictionary(grouping: unique, by: shardIndex)
        let missing = try await withThrowingTaskGroup(of: [Digest].self) { group in
            for (shard, digests) in groups {
                group.addTask { try await shards[shard].store.findMissing(digests) }
            }
            var missing = Set<Digest>()
            for try await part in group { missing.formUnion(part) }
            return missing
        }
        return unique.filter(missing.contains)
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await shards[shardIndex(digest)].store.read(digest, offset: offset, limit: limit)
    }

    /// The owning shard's stored frame, if it keeps the blob compressed: routing changes nothing stored.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        try await shards[shardIndex(digest)].store.readZstd(digest)
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try await shards[shardIndex(digest)].store.write(digest, body: body)
    }

    public func delete(_ digests: [Digest]) async throws {
        let groups = Dictionary(grouping: digests.uniqued(), by: shardIndex)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (shard, digests) in groups {
                group.addTask { try await shards[shard].store.delete(digests) }
            }
            try await group.waitForAll()
        }
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        await scatter(digests.indices.map { (shardIndex(digests[$0]), $0) }) { shard, indices in
            await shards[shard].store.readBatch(indices.map { digests[$0] })
        }
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        await scatter(blobs.indices.map { (shardIndex(blobs[$0].digest), $0) }) { shard, indices in
            await shards[shard].store.writeBatch(indices.map { blobs[$0] })
        }
    }
}
