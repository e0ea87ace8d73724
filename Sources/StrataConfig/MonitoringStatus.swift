import Foundation
import StrataServer
import StrataStorage

/// What `/status` reports of each instance: the storages under its services that know how full they
/// are, and its with-cache storages' fast tiers.
public struct StatusSources: Sendable {
    public struct Storage: Sendable {
        public let name: String
        public let backend: String
        public let usage: any StorageUsageReporting
    }
    public struct FastTier: Sendable {
        public let name: String
        public let store: WithCacheBlobStore
    }
    public var storages: [String: [Storage]] = [:]
    public var fastTiers: [String: [FastTier]] = [:]

    public init() {}
}

/// `/status`'s JSON document.
public struct ServerStatus: Codable, Sendable {
    public struct StorageStatus: Codable, Sendable {
        public var name: String
        public var backend: String
        public var bytes: Int64?
        public var blobs: Int?
        public var limitBytes: Int64?
        public var evictions: Int64?
    }
    public struct FastTierStatus: Codable, Sendable {
        public var name: String
        public var reads: Int64
        public var misses: Int64
        /// Reads the fast tier answered, of all reads; nil before the first read.
        public var hitRatio: Double?
    }
    public struct ActionCacheStatus: Codable, Sendable {
        public var hits: Int
        public var misses: Int
        public var hitRatio: Double?
    }
    public struct InstanceStatus: Codable, Sendable {
        public var name: String
        public var storages: [StorageStatus]
        public var fastTiers: [FastTierStatus]
        public var actionCache: ActionCacheStatus
    }
    public var version: String
    public var uptimeSeconds: Double
    public var instances: [InstanceStatus]

    /// The status now, of `configuration`'s instances; hit ratios are since start.
    public static func current(
        of configuration: Configuration, version: String, started: ContinuousClock.Instant, rpcMetrics: RPCMetrics?
    ) -> ServerStatus {
        let actionCache = rpcMetrics?.actionCacheResults() ?? [:]
        func ratio(_ part: Int64, of whole: Int64) -> Double? { whole == 0 ? nil : Double(part) / Double(whole) }
        let instances = configuration.instances.map(\.name).sorted().map { name in
            let results = actionCache[name] ?? (0, 0)
            return InstanceStatus(
                name: name,
                storages: (configuration.statusSources.storages[name] ?? []).map { storage in
                    let usage = storage.usage.storageUsage
                    return StorageStatus(
                        name: storage.name, backend: storage.backend, bytes: usage.bytes, blobs: usage.blobs,
                        limitBytes: usage.limitBytes, evictions: usage.evictions)
                },
                fastTiers: (configuration.statusSources.fastTiers[name] ?? []).map { tier in
                    let (reads, misses) = tier.store.fastTierReads
                    return FastTierStatus(name: tier.name, reads: reads, misses: misses, hitRatio: ratio(reads - misses, of: reads))
                },
                actionCache: ActionCacheStatus(
                    hits: results.hits, misses: results.misses,
                    hitRatio: ratio(Int64(results.hits), of: Int64(results.hits + results.misses))))
        }
        return ServerStatus(
            version: version, uptimeSeconds: (ContinuousClock.now - started).timeInterval, instances: instances)
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) + "\n" } ?? "{}\n"
    }
}

extension Builder {
    /// For each instance, the storages reachable from the ones its services name.
    func statusSources(_ instances: [Instance]) -> StatusSources {
        var sources = StatusSources()
        for instance in instances {
            var seen: Set<String> = []
            var pending = instanceStorageRoots[instance.name] ?? []
            var order: [String] = []
            while let identity = pending.popLast() {
                guard seen.insert(identity).inserted else { continue }
                order.append(identity)
                pending += (shapes[identity]?.children ?? []).reversed()
            }
            for identity in order {
                guard let node = shapes[identity]?.node else { continue }
                if let usage = usageReporters[identity] {
                    sources.storages[instance.name, default: []].append(.init(name: node.path, backend: Self.backendLabel(node), usage: usage))
                }
                if let store = withCacheStores[identity] {
                    sources.fastTiers[instance.name, default: []].append(.init(name: node.path, store: store))
                }
            }
        }
        return sources
    }
}
