import Foundation
import StrataCore

/// Routes each blob by its size: to the first of `limited` whose `maxSize` is larger than the blob
/// (strictly, as BuildGrid does), otherwise to `fallback`. Batch calls are split per target and run
/// concurrently. Typical use: small blobs to SQL or Redis, large ones to S3 or disk.
public struct SizeDifferentiatedBlobStore: BlobStore {
    public struct Route: Sendable {
        public var maxSize: Int64
        public var store: any BlobStore

        public init(maxSize: Int64, store: any BlobStore) {
            self.maxSize = maxSize
            self.store = store
        }
    }

    public let limited: [Route]
    public let fallback: any BlobStore

    public init(limited: [Route], fallback: any BlobStore) {
        self.limited = limited
        self.fallback = fallback
    }

    public var maximumBlobSize: Int64? { fallback.maximumBlobSize }

    /// Index into `limited`, or `limited.count` for the fallback.
    private func target(_ digest: Digest) -> Int {
        limited.firstIndex { digest.sizeBytes < $0.maxSize } ?? limited.count
    }

    private func store(_ target: Int) -> any BlobStore {
        target < limited.count ? limited[target].store : fallback
    }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let unique = digests.uniqued()
        let groups = Dictionary(grouping: unique, by: target)
        let missing = try await withThrowingTaskGroup(of: [Digest].self) { group in
            for (target, digests) in groups {
                group.addTask { try await store(target).findMissing(digests) }
            }
            var missing = Set<Digest>()
            for try await part in group { missing.formUnion(part) }
            return missing
        }
        return unique.filter(missing.contains)
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await store(target(digest)).read(digest, offset: offset, limit: limit)
    }

    /// The chosen store's stored frame, if it keeps the blob compressed: routing changes nothing stored.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        try await store(target(digest)).readZstd(digest)
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try await store(target(digest)).write(digest, body: body)
    }

    public func delete(_ digests: [Digest]) async throws {
        let groups = Dictionary(grouping: digests.uniqued(), by: target)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (target, digests) in groups {
                group.addTask { try await store(target).delete(digests) }
            }
            try await group.waitForAll()
        }
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        await scatter(digests.indices.map { (target(digests[$0]), $0) }) { target, indices in
            await store(target).readBatch(indices.map { digests[$0] })
        }
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        await scatter(blobs.indices.map { (target(blobs[$0].digest), $0) }) { target, indices in
            await store(target).writeBatch(indices.map { blobs[$0] })
        }
    }
}

/// Runs `operation` once per target on that target's share of a batch, concurrently, and puts the
/// per-item results back in the batch's order. `assignments` pairs each batch index with its target.
func scatter<Target: Hashable & Sendable, Value: Sendable>(
    _ assignments: [(target: Target, index: Int)],
    _ operation: @escaping @Sendable (Target, [Int]) async -> [Result<Value, StrataError>]
) async -> [Result<Value, StrataError>] {
    var groups: [Target: [Int]] = [:]
    for assignment in assignments { groups[assignment.target, default: []].append(assignment.index) }
    var results = [Result<Value, StrataError>?](repeating: nil, count: assignments.count)
    await withTaskGroup(of: ([Int], [Result<Value, StrataError>]).self) { group in
        for (target, indices) in groups {
            group.addTask { (indices, await operation(target, indices)) }
        }
        for await (indices, partial) in group {
            for (index, result) in zip(indices, partial) { results[index] = result }
        }
    }
    return results.map { $0 ?? .failure(.internal("a batch item got no result")) }
}
