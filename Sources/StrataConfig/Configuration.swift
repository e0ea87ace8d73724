import CoreMetrics
import Foundation
import Logging
import StrataActionCache
import StrataAuth
import StrataCore
import StrataHTTPCache
import StrataMetrics
import StrataServer
import ServiceLifecycle
import StrataSQL
import StrataStorage
import Yams

/// A loaded configuration: BuildGrid's tagged YAML turned into the objects a server runs.
///
/// Supported now: `server` (`!channel`), `storages` (`!lru-storage`, `!disk-storage`), `caches`
/// (`!lru-action-cache`), `schedulers` (`!memory-scheduler`), `instances` with `!cas`, `!bytestream`,
/// `!action-cache`, `!execution` and `!bots`. Anchors and aliases
/// share one object. Anything else is refused with its file, line and key: every problem of a file at
/// once, a `ConfigErrors` when there are several.
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
    /// The service modules the server registers (storage services and Capabilities; execution's when an
    /// instance has it).
    public var modules: [any ServiceModule] = StrataServer.storageModules
    /// `authorization:`: how requests authenticate (for the server's interceptor) and the access policy
    /// the registry applies; nil when the section is absent or `method: none` without an ACL.
    public var authentication: Authentication?
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
    /// Every configured backend that can be asked whether it answers (Redis, PostgreSQL, S3, disk
    /// folders, remote servers), with where it is configured: what `/readyz` and the gRPC health
    /// service report.
    public var readiness = Readiness()

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
    /// What `monitoring:` asked for, nil when it is absent or disabled.
    public var monitoring: MonitoringSetup?
    /// The storages `/status` reports, by instance.
    public var statusSources: StatusSources = StatusSources()
    /// The `!http-channel`s (Bazel's HTTP cache protocol) and each instance's blob sizes by hash, which
    /// they share with the instance's decorated CAS (HTTPChannelConfig.swift).
    public var httpCaches: [HTTPCacheChannel] = []
    public var blobSizeIndexes: [String: BlobSizeIndex] = [:]

    /// The largest BatchUpdateBlobs/BatchReadBlobs, announced in Capabilities: 4 MiB, or lower under a
    /// smaller `grpc.max_receive_message_length`.
    public var maxBatchTotalSizeBytes = InstanceRegistry.defaultMaxBatchTotalSizeBytes

    public var registry: InstanceRegistry {
        InstanceRegistry(
            instances, maxBatchTotalSizeBytes: maxBatchTotalSizeBytes,
            accessPolicy: authentication.map { AccessPolicy(settings: $0.settings) })
    }

    public static func load(file: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Configuration {
        let text: String
        switch readTextFile(atPath: file) {
        case .success(let contents): text = contents
        case .failure(let failure): throw ConfigError(file: file, line: nil, path: "", message: "cannot read the file: \(failure.reason)")
        }
        return try parse(yaml: text, file: file, environment: environment)
    }

    /// The configuration `yaml` describes, or its problems: the `ConfigError` when there is one, a
    /// `ConfigErrors` of all of them in file order when there are several.
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
        let configuration = builder.build(ConfigNode(node: root, file: file, path: "", environment: environment))
        if let problems = ConfigErrors.combining(builder.errors) { throw problems }
        guard let configuration else {
            throw ConfigError(file: file, line: nil, path: "", message: "the configuration could not be built")
        }
        return configuration
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
    "!introspection",
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
    /// Backends to ask whether they answer, each once (aliases share one).
    var readinessChecks: [Readiness.Backend] = []
    /// Each storage node's place in the graph, and what writes to the storages, for the checks that
    /// refuse configurations losing data (StorageGraphChecks.swift).
    var shapes: [String: StorageShape] = [:]
    var storageStack: [String] = []
    var storageUses: [StorageUse] = []
    var warnings: [String] = []
    /// Every problem found so far, and the shared nodes that failed (ErrorCollection.swift).
    var errors: [ConfigError] = []
    var failed: Set<String> = []
    /// False when an instance failed before its names were known: a cleanup entry naming an unknown
    /// instance may then name that one, and says nothing.
    var instanceNamesComplete = true
    /// `grpc-server-options`' view of every channel's connection options, and the batch limit
    /// (BuildGridOptionsConfig.swift).
    var serverConnectionPolicy = ConnectionPolicy.default
    var maxBatchTotalSizeBytes = InstanceRegistry.defaultMaxBatchTotalSizeBytes
    var cacheSummary: [String] = []
    /// Verified listable storages (the wrapper, its backend, its name), for `strata scrub`.
    var scrubbable: [(store: any BlobStore, backend: any ListableBlobStore, name: String)] = []
    /// What records, when monitoring is on: every storage and cache node is wrapped in a metrics
    /// decorator (`monitoredStorages`, by node identity, so aliases share one).
    var monitoringSetup: MonitoringSetup?
    var metricsFactory: (any MetricsFactory)? { monitoringSetup?.monitoring.factory }
    var monitoredStorages: [String: any BlobStore] = [:]
    /// Storages that know how full they are, and with-cache storages, by node identity: for the gauges and `/status`.
    var usageReporters: [String: any StorageUsageReporting] = [:]
    var withCacheStores: [String: WithCacheBlobStore] = [:]
    /// The storage nodes each instance's services name, by instance name.
    var instanceStorageRoots: [String: [String]] = [:]
    /// `!http-channel`s' `instance-name`s, checked once the instances are known, and the largest
    /// `blob-size-index-entries` (HTTPChannelConfig.swift).
    var httpInstanceNodes: [(name: String, node: ConfigNode)] = []
    var blobSizeIndexEntries: Int?

    /// Builds everything `root` describes, recording each item's problem in `errors` and going on
    /// (ErrorCollection.swift); the result is only meant to be used when `errors` stays empty.
    mutating func build(_ root: ConfigNode) -> Configuration? {
        guard let top = check({ builder throws(ConfigError) in
            try root.mapping(
                allowed: ["server", "connections", "storages", "caches", "instances", "thread-pool-size", "cleanup",
                          "description", "server-reflection", "grpc-compression", "grpc-server-options", "metering",
                          "schedulers", "services", "monitoring", "authorization", "maximum-concurrent-rpcs", "limiter"],
                problems: &builder.errors)
        }) else { return nil }
        if let threads = top["thread-pool-size"] {
            warnings.append("\(threads.file):\(threads.keyLine ?? threads.line ?? 0): thread-pool-size is ignored: Strata sizes its own thread pools")
        }
        // BuildGrid's server-wide options (BuildGridOptionsConfig.swift), before the channels they apply to.
        buildServerOptions(top)
        let concurrencyLimits = check({ builder throws(ConfigError) in try builder.concurrencyLimits(top) }) ?? []

        var addresses: [ListenAddress] = []
        var connectionPolicies: [ListenAddress: ConnectionPolicy] = [:]
        var tls: [ListenAddress: TLSCredentials] = [:]
        var tlsLocations: [ListenAddress: ConfigLocation] = [:]
        var channelsFailed = false
        var httpCaches: [HTTPCacheChannel] = []
        if let server = top["server"] {
            for node in check({ builder throws(ConfigError) in try server.sequence() }) ?? [] {
                if node.applicationTag == "!http-channel" {
                    if let http = check({ builder throws(ConfigError) in try builder.httpChannel(node) }) { httpCaches.append(http) }
                    continue
                }
                guard let channel = check({ builder throws(ConfigError) in try builder.channel(node) }) else {
                    channelsFailed = true
                    continue
                }
                addresses.append(channel.address)
                connectionPolicies[channel.address] = channel.policy
                tls[channel.address] = channel.tls
                tlsLocations[channel.address] = channel.credentialsLocation
            }
            if addresses.isEmpty, !channelsFailed, case .sequence = server.node {
                record(server.error("at least one !channel is required"))
            }
        } else {
            record(root.error("\"server\" is required: a list of !channel entries"))
        }

        // Before the storages: with monitoring on, each is wrapped in a metrics decorator as it is built.
        if let monitoringNode = top["monitoring"],
           let outputs = check({ builder throws(ConfigError) in try builder.monitoringOutputs(monitoringNode) }) {
            if !outputs.isEmpty {
                let monitoring = Monitoring(
                    prometheus: outputs.contains { if case .prometheus = $0 { true } else { false } },
                    statsD: outputs.compactMap { if case .statsD(let endpoint, let format) = $0 { (endpoint, format) } else { nil } },
                    logger: Logger(label: "strata.monitoring"))
                monitoringSetup = MonitoringSetup(outputs: outputs, monitoring: monitoring, rpcMetrics: RPCMetrics(factory: monitoring.factory))
            }
        }
        // Top-level lists only declare (and anchor) objects; instances use them through aliases.
        for node in top["connections"].flatMap({ node in check { _ throws(ConfigError) in try node.sequence() } }) ?? [] {
            _ = check { builder throws(ConfigError) in try builder.connection(node) }
        }
        for node in top["storages"].flatMap({ node in check { _ throws(ConfigError) in try node.sequence() } }) ?? [] {
            _ = check { builder throws(ConfigError) in try builder.storage(node) }
        }
        for node in top["caches"].flatMap({ node in check { _ throws(ConfigError) in try node.sequence() } }) ?? [] {
            _ = check { builder throws(ConfigError) in try builder.cache(node) }
        }
        // After the storages and caches they name (ExecutionConfig.swift).
        if let node = top["schedulers"] { declaredSchedulers(node) }

        var instances: [Instance] = []
        var names: Set<String> = []
        if let instancesNode = top["instances"] {
            var instancesFailed = false
            for node in check({ _ throws(ConfigError) in try instancesNode.sequence() }) ?? [] {
                guard let built = check({ builder throws(ConfigError) in try builder.instances(node) }) else {
                    instancesFailed = true
                    continue
                }
                for instance in built {
                    guard names.insert(instance.name).inserted else {
                        record(node.error("instance name \"\(instance.name)\" is used twice"))
                        continue
                    }
                    instances.append(instance)
                }
            }
            if instances.isEmpty, !instancesFailed, case .sequence = instancesNode.node {
                record(instancesNode.error("at least one instance is required"))
            }
            instanceNamesComplete = !instancesFailed
        } else {
            record(root.error("\"instances\" is required"))
        }
        var blobSizeIndexes: [String: BlobSizeIndex] = [:]
        if !httpCaches.isEmpty {
            (instances, blobSizeIndexes) = servingHTTPCache(instances, complete: instanceNamesComplete)
        }
        var cleanups: [CleanupTarget] = []
        if let cleanupNode = top["cleanup"] { cleanups = cleanupTargets(cleanupNode, instanceNames: names) }
        // The graph checks see the storages and uses that were built; a failed one is reported already.
        _ = check { builder throws(ConfigError) in try builder.refuseWritesPastTheJanitorsIndex() }
        var authentication: Authentication?
        if let authorizationNode = top["authorization"],
           let authorization = check({ builder throws(ConfigError) in
               try AuthorizationConfig.parse(authorizationNode, instanceNames: names, warnings: &builder.warnings)
           }) {
            if authorization.settings.isEnforced { authentication = authorization.authentication }
            if let keySet = authorization.keySet { backgroundServices.append(keySet) }
        }
        guard errors.isEmpty else { return nil }
        var configuration = Configuration(
            addresses: addresses, connectionPolicies: connectionPolicies, tls: tls, tlsLocations: tlsLocations,
            concurrencyLimits: concurrencyLimits, instances: instances, authentication: authentication,
            storageSummary: storages.values.map(\.summary).sorted(), cacheSummary: cacheSummary.sorted(),
            warnings: inFileOrder(warnings),
            backgroundServices: backgroundServices, cleanups: cleanups,
            sqlConnections: objects.values.compactMap { $0 as? SQLConnection }.filter { !$0.settings.readOnly },
            preparations: preparations, readiness: Readiness(backends: readinessChecks), scrubTargets: scrubTargets(),
            monitoring: monitoringSetup, statusSources: statusSources(instances), maxBatchTotalSizeBytes: maxBatchTotalSizeBytes)
        configuration.httpCaches = httpCaches
        configuration.blobSizeIndexes = blobSizeIndexes
        servingExecution(&configuration)
        return configuration
    }

    /// Registers `backend` (built from `node`) for the readiness checks, named `name`.
    mutating func checkReadiness(of backend: any ReadinessCheckable, _ name: String, _ node: ConfigNode) {
        readinessChecks.append(.init(backend: backend, name: name, location: "\(node.file):\(node.line ?? 0): \(node.path)"))
    }

    /// `warnings` (each "FILE:LINE: ...") by line, as the problems are: the builder meets items in its
    /// own order (channels before connections), not the file's.
    func inFileOrder(_ warnings: [String]) -> [String] {
        func line(_ warning: String) -> Int {
            warning.split(separator: ":", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
        }
        return warnings.enumerated().sorted { a, b in
            let (lineA, lineB) = (line(a.element), line(b.element))
            return lineA != lineB ? lineA < lineB : a.offset < b.offset
        }.map(\.element)
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
            // Remembered as failed: a storage naming it through an alias says nothing more.
            try once(node) { builder throws(ConfigError) -> Void in
                throw builder.unknownTag(node, kind: "connection", known: ["!redis-connection", "!sql-connection"])
            }
        }
    }

    /// The storage of `node`, built once; in a `MetricsBlobStore` when monitoring is on.
    mutating func storage(_ node: ConfigNode) throws(ConfigError) -> any BlobStore {
        let store = try unmonitoredStorage(node)
        guard let monitoringSetup else { return store }
        if let wrapped = monitoredStorages[node.identity] { return wrapped }
        let backend = Self.backendLabel(node)
        let wrapped = MetricsBlobStore(store, backend: backend, name: node.path, factory: monitoringSetup.monitoring.factory)
        monitoredStorages[node.identity] = wrapped
        if let reporter = usageReporters[node.identity] {
            monitoringSetup.monitoring.addStorageGauges(backend: backend, name: node.path, storage: reporter)
        }
        return wrapped
    }

    /// A node's tag without its "!", the `backend` label of its metrics.
    static func backendLabel(_ node: ConfigNode) -> String {
        String((node.applicationTag ?? "untagged").drop { $0 == "!" })
    }

    /// The storage of `node` itself, without a metrics decorator: what the configuration checks and a
    /// cleanup entry inspect.
    mutating func unmonitoredStorage(_ node: ConfigNode) throws(ConfigError) -> any BlobStore {
        if let parent = storageStack.last { shapes[parent]?.children.append(node.identity) }
        if let built = storages[node.identity] { return built.store }
        shapes[node.identity] = StorageShape(node: node)
        storageStack.append(node.identity)
        defer { storageStack.removeLast() }
        return try once(node) { builder throws(ConfigError) in try builder.buildStorage(node) }
    }

    private mutating func buildStorage(_ node: ConfigNode) throws(ConfigError) -> any BlobStore {
        let built: (store: any BlobStore, summary: String)
        switch node.applicationTag {
        case "!lru-storage":
            let options = try node.mapping(allowed: ["size"])
            guard let size = options["size"] else { throw node.error("!lru-storage needs a size, e.g. size: 2048M") }
            let bytes = try size.size()
            let store = LRUBlobStore(capacityBytes: bytes)
            usageReporters[node.identity] = store
            built = (store, "!lru-storage (\(bytes) bytes in memory)")
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
        return try once(node) { builder throws(ConfigError) in try builder.buildCache(node) }
    }

    private mutating func buildCache(_ node: ConfigNode) throws(ConfigError) -> any ActionCache {
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
        let cache: any ActionCache = metricsFactory.map {
            MetricsActionCache(built, backend: Self.backendLabel(node), name: node.path, factory: $0)
        } ?? built
        caches[node.identity] = cache
        return cache
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
        let options = try node.mapping(allowed: ["name", "description", "services", "storages", "caches"], unsupported: ["schedulers"])
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
        // Documentation, as in BuildGrid: a string, used by nothing.
        _ = try options["description"]?.string()
        // From here on, each storage, cache and service is an item of its own: all their problems are reported.
        for storage in try options["storages"]?.sequence() ?? [] {
            _ = check { builder throws(ConfigError) in try builder.storage(storage) }
        }
        for cache in try options["caches"]?.sequence() ?? [] {
            _ = check { builder throws(ConfigError) in try builder.cache(cache) }
        }

        var instance = Instance(name: "")
        var actionCacheNode: ConfigNode?
        var servicesFailed = false
        for service in try options["services"]?.sequence() ?? [] {
            let built: Void? = check { builder throws(ConfigError) in
                try builder.service(service, into: &instance, actionCacheNode: &actionCacheNode, of: names)
            }
            if built == nil { servicesFailed = true }
        }
        // GetActionResult hands out only entries whose outputs are all in the CAS: the instance's own
        // CAS, or the one the cache's `storage:` names.
        if let cache = instance.actionCache, let node = actionCacheNode {
            if let cas = instance.cas?.store ?? cacheStorages[node.identity] {
                instance.actionCache = CompletenessCheckingActionCache(
                    cache, cas: cas, metrics: metricsFactory.map { ($0, node.path) })
            } else if !servicesFailed {
                warnings.append("\(node.file):\(node.line ?? 0): \(node.path): this instance has no !cas and the cache names no storage: cached results are handed out without checking that their outputs exist")
            }
        }
        return names.map { name in
            var named = instance
            named.name = name
            return named
        }
    }

    /// One entry of an instance's `services`, added to `instance`.
    mutating func service(
        _ service: ConfigNode, into instance: inout Instance, actionCacheNode: inout ConfigNode?, of names: [String]
    ) throws(ConfigError) {
        switch service.applicationTag {
        case "!cas":
            let serviceOptions = try service.mapping(
                allowed: ["storage", "read-only", "enable-chunking", "average-chunk-size", "chunked-by-buildbox-allowed-subjects",
                          "tree-cache-size", "tree-cache-ttl-minutes", "tree-cache-redis"])
            guard instance.cas == nil else { throw service.error("an instance has one !cas") }
            try casBuildGridOptions(serviceOptions)
            instance.cas = try storageService(service, serviceOptions, of: names)
            instance[Instance.BlobChunking.self] = try chunking(serviceOptions)
        case "!bytestream":
            let serviceOptions = try service.mapping(
                allowed: ["storage", "read-only", "disable-overwrite-early-return", "stream-blob"])
            guard instance.byteStream == nil else { throw service.error("an instance has one !bytestream") }
            try byteStreamBuildGridOptions(serviceOptions)
            instance.byteStream = try storageService(service, serviceOptions, of: names)
        case "!action-cache":
            let serviceOptions = try service.mapping(allowed: ["cache"])
            guard let cacheNode = serviceOptions["cache"] else { throw service.error("!action-cache needs a cache") }
            guard instance.actionCache == nil else { throw service.error("an instance has one !action-cache") }
            instance.actionCache = try cache(cacheNode)
            actionCacheNode = cacheNode
        case "!execution": try executionService(service, into: &instance)
        case "!bots": try botsService(service, into: &instance)
        default:
            throw unknownTag(service, kind: "service", known: ["!cas", "!bytestream", "!action-cache", "!execution", "!bots"])
        }
    }

    mutating func storageService(
        _ node: ConfigNode, _ options: [String: ConfigNode], of instanceNames: [String]
    ) throws(ConfigError) -> Instance.StorageService {
        guard let storageNode = options["storage"] else { throw node.error("\(node.applicationTag ?? "service") needs a storage") }
        let service = Instance.StorageService(
            store: try storage(storageNode), readOnly: try options["read-only"]?.bool() ?? false)
        for name in instanceNames { instanceStorageRoots[name, default: []].append(storageNode.identity) }
        let names = instanceNames.map { "\"\($0)\"" }.joined(separator: ", ")
        storageUses.append(StorageUse(
            storage: storageNode.identity, user: node,
            description: "\(node.applicationTag ?? "service") of instance\(instanceNames.count == 1 ? "" : "s") \(names)",
            writes: !service.readOnly))
        return service
    }
}
