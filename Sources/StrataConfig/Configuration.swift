import Foundation
import StrataActionCache
import StrataCore
import StrataServer
import ServiceLifecycle
import StrataSQL
import StrataStorage
import Yams

/// A loaded configuration: BuildGrid's tagged YAML turned into the objects a server runs.
///
/// Supported now: `server` (`!channel`), `storages` (`!lru-storage`, `!disk-storage`), `caches`
/// (`!lru-action-cache`), `instances` with `!cas`, `!bytestream` and `!action-cache`. Anchors and aliases
/// share one object. Anything else is refused with its file, line and key.
public struct Configuration: Sendable {
    public var addresses: [ListenAddress]
    /// The connection options of each `!channel` that sets any (`idle-timeout`, ...).
    public var connectionPolicies: [ListenAddress: ConnectionPolicy] = [:]
    /// The `!channel`s served over TLS (`insecure-mode: false`), by address; the others are plaintext.
    public var tls: [ListenAddress: TLSCredentials] = [:]
    /// Where each TLS channel's `credentials` are, for `checkTLSFiles`.
    var tlsLocations: [ListenAddress: ConfigLocation] = [:]
    /// `maximum-concurrent-rpcs` and `limiter: {concurrent-request-limit}`.
    public var concurrencyLimits: [ConcurrencyLimit] = []
    public var instances: [Instance]
    /// One line per storage, for the start-up log.
    public var storageSummary: [String]
    /// One line per action cache that keeps results itself (memory, disk), for the start-up log.
    public var cacheSummary: [String] = []
    public var warnings: [String]
    /// What the configured backends need running while the server runs (connection pools):
    /// `strata serve` runs them in its service group, before and after the server.
    public var backgroundServices: [any Service]
    /// The `cleanup:` entries, for `strata cleanup` and `strata janitor` (`strata serve` only validates them).
    public var cleanups: [CleanupTarget] = []
    /// The read-write SQL connections, for `strata migrate`.
    public var sqlConnections: [SQLConnection] = []
    /// The backends with work to do before serving (creating folders, clearing a crashed run's
    /// leftovers), which loading does not do: see `prepare()`.
    public var preparations: [Preparation] = []

    public struct Preparation: Sendable {
        public let backend: any Preparable
        /// The backend's node, for a failure's message.
        let file: String
        let line: Int?
        let path: String
    }

    /// Prepares every configured backend that needs it, once, for `strata serve` before it listens; a
    /// failure names the backend's file and line. Loading a configuration has no side effects, so the
    /// maintenance commands and `config check` can load the file a live server runs without disturbing
    /// it; they do not call this.
    public func prepare() async throws {
        for preparation in preparations {
            do {
                try await preparation.backend.prepare()
            } catch {
                throw ConfigError(
                    file: preparation.file, line: preparation.line, path: preparation.path,
                    message: (error as? StrataError)?.message ?? "\(error)")
            }
        }
    }
    /// The listable persistent storages, for `strata scrub`.
    public var scrubTargets: [ScrubTarget] = []

    public var registry: InstanceRegistry { InstanceRegistry(instances) }

    public static func load(file: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Configuration {
        let text: String
        switch readTextFile(atPath: file) {
        case .success(let contents): text = contents
        case .failure(let failure): throw ConfigError(file: file, line: nil, path: "", message: "cannot read the file: \(failure.reason)")
        }
        return try parse(yaml: text, file: file, environment: environment)
    }

    public static func parse(
        yaml: String, file: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> Configuration {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: yaml) else {
                throw ConfigError(file: file, line: nil, path: "", message: "the file is empty")
            }
            root = node
        } catch let error as YamlError {
            throw ConfigError(file: file, line: Self.line(of: error), path: "", message: "not valid YAML: \(error)")
        }
        var builder = Builder()
        return try builder.build(ConfigNode(node: root, file: file, path: "", environment: environment))
    }

    private static func line(of error: YamlError) -> Int? {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _): mark.line
        default: nil
        }
    }
}

/// BuildGrid tags Strata knows of but has not built yet: named so the error says "not yet", not "unknown".
let plannedTags: Set<String> = [
    "!redis-storage", "!redis-fmb-cache",
    "!execution", "!bots", "!introspection",
]

struct Builder {
    var storages: [String: (store: any BlobStore, summary: String)] = [:]
    var caches: [String: any ActionCache] = [:]
    /// The CAS a cache's `storage:` option names, by the cache node's identity: what its results
    /// are checked against when its instance has no CAS of its own.
    var cacheStorages: [String: any BlobStore] = [:]
    /// Connections and other shared objects built once per YAML node (aliases share them).
    var objects: [String: any Sendable] = [:]
    var backgroundServices: [any Service] = []
    /// Backends to prepare before serving, each once (aliases share one).
    var preparations: [Configuration.Preparation] = []
    /// Each storage node's place in the graph, and what writes to the storages, for the checks that
    /// refuse configurations losing data (StorageGraphChecks.swift).
    var shapes: [String: StorageShape] = [:]
    var storageStack: [String] = []
    var storageUses: [StorageUse] = []
    var warnings: [String] = []
    var cacheSummary: [String] = []
    /// Verified listable storages (the wrapper, its backend, its name), for `strata scrub`.
    var scrubbable: [(store: any BlobStore, backend: any ListableBlobStore, name: String)] = []

    mutating func build(_ root: ConfigNode) throws(ConfigError) -> Configuration {
        let top = try root.mapping(
            allowed: ["server", "connections", "storages", "caches", "instances", "thread-pool-size", "cleanup",
                      "maximum-concurrent-rpcs", "limiter"],
            unsupported: ["authorization", "monitoring", "server-reflection",
                          "grpc-compression", "grpc-server-options", "schedulers", "services"])
        if let threads = top["thread-pool-size"] {
            warnings.append("\(threads.file):\(threads.line ?? 0): thread-pool-size is ignored: Strata sizes its own thread pools")
        }
        let concurrencyLimits = try concurrencyLimits(top)
        guard let server = top["server"] else { throw root.error("\"server\" is required: a list of !channel entries") }
        var addresses: [ListenAddress] = []
        var connectionPolicies: [ListenAddress: ConnectionPolicy] = [:]
        var tls: [ListenAddress: TLSCredentials] = [:]
        var tlsLocations: [ListenAddress: ConfigLocation] = [:]
        for node in try server.sequence() {
            let channel = try self.channel(node)
            addresses.append(channel.address)
            connectionPolicies[channel.address] = channel.policy
            tls[channel.address] = channel.tls
            tlsLocations[channel.address] = channel.credentialsLocation
        }
        guard !addresses.isEmpty else { throw server.error("at least one !channel is required") }

        // Top-level lists only declare (and anchor) objects; instances use them through aliases.
        for node in try top["connections"]?.sequence() ?? [] { try connection(node) }
        for node in try top["storages"]?.sequence() ?? [] { _ = try storage(node) }
        for node in try top["caches"]?.sequence() ?? [] { _ = try cache(node) }

        guard let instancesNode = top["instances"] else { throw root.error("\"instances\" is required") }
        var instances: [Instance] = []
        var names: Set<String> = []
        for node in try instancesNode.sequence() {
            for instance in try self.instances(node) {
                guard names.insert(instance.name).inserted else {
                    throw node.error("instance name \"\(instance.name)\" is used twice")
                }
                instances.append(instance)
            }
        }
        guard !instances.isEmpty else { throw instancesNode.error("at least one instance is required") }
        var cleanups: [CleanupTarget] = []
        if let cleanupNode = top["cleanup"] { cleanups = try cleanupTargets(cleanupNode, instanceNames: names) }
        try refuseWritesPastTheJanitorsIndex()
        return Configuration(
            addresses: addresses, connectionPolicies: connectionPolicies, tls: tls, tlsLocations: tlsLocations,
            concurrencyLimits: concurrencyLimits, instances: instances,
            storageSummary: storages.values.map(\.summary).sorted(), cacheSummary: cacheSummary.sorted(), warnings: warnings,
            backgroundServices: backgroundServices, cleanups: cleanups,
            sqlConnections: objects.values.compactMap { $0 as? SQLConnection }.filter { !$0.settings.readOnly },
            preparations: preparations, scrubTargets: scrubTargets())
    }

    func requireTag(_ node: ConfigNode, _ expected: String) throws(ConfigError) {
        guard node.applicationTag == expected else {
            throw node.error("expected \(expected), found \(node.applicationTag ?? "an untagged value")")
        }
    }

    /// A connection declared under `connections:`; storages and caches name it through an alias.
    mutating func connection(_ node: ConfigNode) throws(ConfigError) {
        switch node.applicationTag {
        case "!redis-connection": _ = try redisConnection(node)
        case "!sql-connection": _ = try sqlConnection(node)
        default:
            throw unknownTag(node, kind: "connection", known: ["!redis-connection", "!sql-connection"])
        }
    }

    mutating func storage(_ node: ConfigNode) throws(ConfigError) -> any BlobStore {
        if let parent = storageStack.last { shapes[parent]?.children.append(node.identity) }
        if let built = storages[node.identity] { return built.store }
        shapes[node.identity] = StorageShape(node: node)
        storageStack.append(node.identity)
        defer { storageStack.removeLast() }
        let built: (store: any BlobStore, summary: String)
        switch node.applicationTag {
        case "!lru-storage":
            let options = try node.mapping(allowed: ["size"])
            guard let size = options["size"] else { throw node.error("!lru-storage needs a size, e.g. size: 2048M") }
            let bytes = try size.size()
            built = (LRUBlobStore(capacityBytes: bytes), "!lru-storage (\(bytes) bytes in memory)")
        case "!disk-storage": built = try diskStorage(node)
        case "!redis-index": built = try redisIndex(node)
        case "!sql-storage": built = try sqlStorage(node)
        case "!sql-index": built = try sqlIndex(node)
        case "!s3-storage": built = try s3Storage(node)
        case "!size-differentiated-storage": built = try sizeDifferentiatedStorage(node)
        case "!sharded-storage": built = try shardedStorage(node)
        case "!with-cache-storage": built = try withCacheStorage(node)
        case "!replicated-storage": built = try replicatedStorage(node)
        case "!remote-storage": built = try remoteStorage(node)
        default:
            throw unknownTag(node, kind: "storage", known: [
                "!lru-storage", "!disk-storage", "!redis-index", "!sql-storage", "!sql-index", "!s3-storage",
                "!size-differentiated-storage", "!sharded-storage", "!with-cache-storage", "!replicated-storage",
                "!remote-storage",
            ])
        }
        storages[node.identity] = built
        if built.store is any IndexedBlobStore { try refuseEvictingStorage(below: node) }
        return built.store
    }

    mutating func cache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
        if let built = caches[node.identity] { return built }
        let built: any ActionCache
        switch node.applicationTag {
        case "!lru-action-cache":
            let options = try node.mapping(allowed: ["storage", "max-cached-refs", "allow-updates", "cache-failed-actions"])
            if let storage = options["storage"] { cacheStorages[node.identity] = try self.storage(storage) }
            guard let refs = options["max-cached-refs"] else { throw node.error("!lru-action-cache needs max-cached-refs") }
            let cache = LRUActionCache(maxEntries: try refs.int(minimum: 1))
            cacheSummary.append("!lru-action-cache (\(cache.maxEntries) entries in memory)")
            built = try updatePolicy(cache, options)
        case "!disk-action-cache": built = try diskActionCache(node)
        case "!write-once-action-cache": built = try writeOnceActionCache(node)
        case "!sharded-action-cache": built = try shardedActionCache(node)
        case "!with-cache-action-cache": built = try withCacheActionCache(node)
        case "!mirrored-action-cache": built = try mirroredActionCache(node)
        case "!remote-action-cache": built = try remoteActionCache(node)
        case "!redis-action-cache": built = try redisActionCache(node)
        case "!s3action-cache", "!s3-action-cache": built = try s3ActionCache(node)
        default:
            throw unknownTag(node, kind: "action cache", known: [
                "!lru-action-cache", "!disk-action-cache", "!write-once-action-cache", "!sharded-action-cache", "!with-cache-action-cache",
                "!mirrored-action-cache", "!remote-action-cache", "!redis-action-cache", "!s3action-cache",
            ])
        }
        caches[node.identity] = built
        return built
    }

    func unknownTag(_ node: ConfigNode, kind: String, known: [String]) -> ConfigError {
        guard let tag = node.applicationTag else {
            return node.error("expected a tagged \(kind) such as \(known.joined(separator: " or "))")
        }
        if plannedTags.contains(tag) {
            return node.error("\(tag) is not supported by Strata yet; supported \(kind) tags: \(known.joined(separator: ", "))")
        }
        let suggestion = closestMatch(to: tag, among: known).map { " (did you mean \($0)?)" } ?? ""
        return node.error("unknown tag \(tag)\(suggestion); supported \(kind) tags: \(known.joined(separator: ", "))")
    }

    mutating func instances(_ node: ConfigNode) throws(ConfigError) -> [Instance] {
        let options = try node.mapping(allowed: ["name", "services", "storages", "caches"], unsupported: ["schedulers"])
        guard let nameNode = options["name"] else { throw node.error("an instance needs a name (\"\" for the default)") }
        let names: [String]
        if case .sequence = nameNode.node {
            names = try nameNode.sequence().map { node throws(ConfigError) in try node.string() }
        } else {
            names = [try nameNode.string()]
        }
        for name in names {
            if let reserved = name.split(separator: "/").first(where: { ResourceName.reservedSegments.contains($0) }) {
                throw nameNode.error("instance name \"\(name)\" contains the reserved segment \"\(reserved)\"")
            }
            if name.hasPrefix("/") || name.hasSuffix("/") || name.contains("//") {
                throw nameNode.error("instance name \"\(name)\" has an empty path segment")
            }
        }
        for storage in try options["storages"]?.sequence() ?? [] { _ = try self.storage(storage) }
        for cache in try options["caches"]?.sequence() ?? [] { _ = try self.cache(cache) }

        var instance = Instance(name: "")
        var actionCacheNode: ConfigNode?
        for service in try options["services"]?.sequence() ?? [] {
            switch service.applicationTag {
            case "!cas":
                let serviceOptions = try service.mapping(
                    allowed: ["storage", "read-only"],
                    unsupported: ["tree-cache-size", "tree-cache-ttl-minutes", "enable-chunking"])
                guard instance.cas == nil else { throw service.error("an instance has one !cas") }
                instance.cas = try storageService(service, serviceOptions, of: names)
            case "!bytestream":
                let serviceOptions = try service.mapping(
                    allowed: ["storage", "read-only"], unsupported: ["disable-overwrite-early-return"])
                guard instance.byteStream == nil else { throw service.error("an instance has one !bytestream") }
                instance.byteStream = try storageService(service, serviceOptions, of: names)
            case "!action-cache":
                let serviceOptions = try service.mapping(allowed: ["cache"])
                guard let cacheNode = serviceOptions["cache"] else { throw service.error("!action-cache needs a cache") }
                guard instance.actionCache == nil else { throw service.error("an instance has one !action-cache") }
                instance.actionCache = try cache(cacheNode)
                actionCacheNode = cacheNode
            default:
                throw unknownTag(service, kind: "service", known: ["!cas", "!bytestream", "!action-cache"])
            }
        }
        // GetActionResult hands out only entries whose outputs are all in the CAS: the instance's own
        // CAS, or the one the cache's `storage:` names.
        if let cache = instance.actionCache, let node = actionCacheNode {
            if let cas = instance.cas?.store ?? cacheStorages[node.identity] {
                instance.actionCache = CompletenessCheckingActionCache(cache, cas: cas)
            } else {
                warnings.append("\(node.file):\(node.line ?? 0): \(node.path): this instance has no !cas and the cache names no storage: cached results are handed out without checking that their outputs exist")
            }
        }
        return names.map { name in
            var named = instance
            named.name = name
            return named
        }
    }

    mutating func storageService(
        _ node: ConfigNode, _ options: [String: ConfigNode], of instanceNames: [String]
    ) throws(ConfigError) -> Instance.StorageService {
        guard let storageNode = options["storage"] else { throw node.error("\(node.applicationTag ?? "service") needs a storage") }
        let service = Instance.StorageService(
            store: try storage(storageNode), readOnly: try options["read-only"]?.bool() ?? false)
        let names = instanceNames.map { "\"\($0)\"" }.joined(separator: ", ")
        storageUses.append(StorageUse(
            storage: storageNode.identity, user: node,
            description: "\(node.applicationTag ?? "service") of instance\(instanceNames.count == 1 ? "" : "s") \(names)",
            writes: !service.readOnly))
        return service
    }
}
