import Foundation
import ServiceLifecycle
import StrataCore
import StrataRemote
import StrataStorage

/// Storage tags that compose other storages, and `!remote-storage`.
extension Builder {
    mutating func sizeDifferentiatedStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: ["size-limited-storages", "fallback", "thread-pool-size"])
        ignoreThreadPoolSize(options)
        guard let fallbackNode = options["fallback"] else { throw node.error("!size-differentiated-storage needs a fallback storage") }
        guard let limitedNode = options["size-limited-storages"] else {
            throw node.error("!size-differentiated-storage needs size-limited-storages: a list of {max-size, storage}")
        }
        var routes: [SizeDifferentiatedBlobStore.Route] = []
        for entry in try limitedNode.sequence() {
            let fields = try entry.mapping(allowed: ["max-size", "storage"])
            guard let maxSize = fields["max-size"] else { throw entry.error("each size-limited storage needs a max-size") }
            guard let storage = fields["storage"] else { throw entry.error("each size-limited storage needs a storage") }
            routes.append(.init(maxSize: try maxSize.size(), store: try self.storage(storage)))
        }
        guard !routes.isEmpty else { throw limitedNode.error("at least one size-limited storage is required") }
        let fallback = try storage(fallbackNode)
        let limits = routes.map { "<\($0.maxSize)" }.joined(separator: ", ")
        return (SizeDifferentiatedBlobStore(limited: routes, fallback: fallback), "!size-differentiated-storage (\(limits), else fallback)")
    }

    mutating func shardedStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: ["shards", "thread-pool-size"])
        ignoreThreadPoolSize(options)
        guard let shardsNode = options["shards"] else { throw node.error("!sharded-storage needs shards: a list of {name, storage}") }
        var shards: [ShardedBlobStore.Shard] = []
        for entry in try shardsNode.sequence() {
            let fields = try entry.mapping(allowed: ["name", "storage", "weight"])
            guard let nameNode = fields["name"] else { throw entry.error("each shard needs a name (it decides which blobs the shard holds)") }
            let name = try nameNode.string()
            guard !name.isEmpty else { throw nameNode.error("a shard name cannot be empty") }
            guard !shards.contains(where: { $0.name == name }) else { throw nameNode.error("shard name \"\(name)\" is used twice") }
            guard let storage = fields["storage"] else { throw entry.error("shard \"\(name)\" needs a storage") }
            let weight = try fields["weight"].map { node throws(ConfigError) in Double(try node.int(minimum: 1)) } ?? 1
            shards.append(.init(name: name, weight: weight, store: try self.storage(storage)))
        }
        guard !shards.isEmpty else { throw shardsNode.error("at least one shard is required") }
        return (ShardedBlobStore(shards: shards), "!sharded-storage (\(shards.map(\.name).joined(separator: ", ")))")
    }

    mutating func withCacheStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: ["cache", "fallback", "defer-fallback-writes", "fallback-writer-threads"])
        guard let cacheNode = options["cache"] else { throw node.error("!with-cache-storage needs a cache storage") }
        guard let fallbackNode = options["fallback"] else { throw node.error("!with-cache-storage needs a fallback storage") }
        let deferWrites = try options["defer-fallback-writes"]?.bool() ?? false
        let writers = try options["fallback-writer-threads"]?.int(minimum: 1) ?? 20
        let store = WithCacheBlobStore(
            cache: try storage(cacheNode), fallback: try storage(fallbackNode),
            deferFallbackWrites: deferWrites, fallbackWriters: writers, metrics: metricsFactory.map { ($0, node.path) })
        withCacheStores[node.identity] = store
        if deferWrites { backgroundServices.append(DeferredWritesDrain(store: store)) }
        return (store, "!with-cache-storage\(deferWrites ? " (deferred fallback writes)" : "")")
    }

    mutating func replicatedStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(
            allowed: ["storages", "replication-threads", "read-replication", "replication-queue-size"])
        guard let storagesNode = options["storages"] else { throw node.error("!replicated-storage needs storages: a list of at least two") }
        if let queue = options["replication-queue-size"] {
            _ = try queue.int(minimum: 0)
            ignore(queue, because: "Strata always repairs a replica FindMissingBlobs finds lacking a blob, at most replication-threads copies at once; a repair skipped then is made on a later access")
        }
        var replicas: [any BlobStore] = []
        for entry in try storagesNode.sequence() { replicas.append(try storage(entry)) }
        guard replicas.count >= 2 else { throw storagesNode.error("!replicated-storage needs at least two storages") }
        let store = ReplicatedBlobStore(
            replicas: replicas, readReplication: try options["read-replication"]?.bool() ?? true,
            maxConcurrentRepairs: try options["replication-threads"]?.int(minimum: 1) ?? 8)
        return (store, "!replicated-storage (\(replicas.count) replicas)")
    }

    mutating func remoteStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: Self.remoteChannelKeys.union(["verify-reads"]))
        guard let urlNode = options["url"] else { throw node.error("!remote-storage needs a url, e.g. grpc://storage:50051") }
        let url = try urlNode.string()
        var remoteOptions = RemoteBlobStore.Options()
        remoteOptions.channel = try remoteChannelOptions(options, url: url)
        let store: RemoteBlobStore
        do {
            store = try RemoteBlobStore(url: url, options: remoteOptions)
        } catch {
            throw urlNode.error(error.message)
        }
        backgroundServices.append(RemoteChannelService(channel: store.channel))
        checkReadiness(of: store.channel, "!remote-storage \(store.endpoint)", node)
        let instance = remoteOptions.channel.instanceName
        // The remote decides whether to skip a write of a blob it holds (and verifies its own copies).
        let verified = try verifying(store, name: "remote storage \(store.endpoint)", options) { _ in false }
        return (verified, "!remote-storage at \(store.endpoint)\(instance.isEmpty ? "" : " instance \(instance)")")
    }

    private mutating func ignoreThreadPoolSize(_ options: [String: ConfigNode]) {
        if let threads = options["thread-pool-size"] {
            warnings.append("\(threads.file):\(threads.line ?? 0): \(threads.path) is ignored: Strata runs a storage's calls concurrently without a thread pool")
        }
    }
}

/// On shutdown, waits for a with-cache storage's deferred writes to reach its fallback, so the blobs
/// it acknowledged are not lost.
struct DeferredWritesDrain: Service {
    let store: WithCacheBlobStore

    func run() async throws {
        try? await gracefulShutdown()
        await store.drain()
    }
}
