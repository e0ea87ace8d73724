import Logging
import StrataActionCache
import StrataCore
import StrataExecution
import StrataScheduler
import StrataServer
import StrataSQL
import StrataStorage

/// A scheduler the configuration built, with its node's path (the `scheduler` label of its metrics).
struct ConfiguredScheduler: Sendable {
    let name: String
    let backend: ExecutionBackend
}

/// Remote execution's configuration: `schedulers:` (`!memory-scheduler`, `!sql-scheduler`), the property sets, and the `!execution` and `!bots` services.
extension Builder {
    /// The options every scheduler has, BuildGrid's names (Strata's own marked): what
    /// `schedulerSettings` reads. A scheduler tag allows these plus its own.
    static let commonSchedulerOptions: Set<String> = [
        "storage", "action-cache", "property-set", "max-execution-timeout", "bot-session-keepalive-timeout",
        "max-job-attempts", "max-queue-size",
        // Strata's: Bazel sends no CancelOperation on Ctrl-C, so abandoned operations need a bound.
        "unwatched-operation-timeout", "completed-job-retention",
    ]

    /// The top-level `schedulers:` list: each entry is built once, for the services naming it by alias.
    mutating func declaredSchedulers(_ node: ConfigNode) {
        for entry in check({ _ throws(ConfigError) in try node.sequence() }) ?? [] {
            _ = check { builder throws(ConfigError) in try builder.scheduler(entry) }
        }
    }

    /// The scheduler of `node`, built once (aliases share it).
    mutating func scheduler(_ node: ConfigNode) throws(ConfigError) -> ConfiguredScheduler {
        if let built = objects[node.identity] as? ConfiguredScheduler { return built }
        // Its own failure key: a storage node named as a scheduler by mistake must stay usable as a storage.
        return try once(node, key: "scheduler \(node.identity)") { builder throws(ConfigError) in
            let built: ConfiguredScheduler
            switch node.applicationTag {
            case "!memory-scheduler":
                let options = try node.mapping(allowed: Self.commonSchedulerOptions)
                let (storage, cache) = try builder.schedulerStorage(node, options)
                let settings = try builder.schedulerSettings(options)
                built = ConfiguredScheduler(
                    name: node.path,
                    backend: ExecutionBackend(scheduler: InMemoryScheduler(settings: settings), storage: storage, actionCache: cache))
            case "!sql-scheduler":
                built = try builder.sqlScheduler(node)
            default:
                throw builder.unknownTag(node, kind: "scheduler", known: ["!memory-scheduler", "!sql-scheduler"])
            }
            builder.objects[node.identity] = built
            return built
        }
    }

    /// BuildGrid's `!sql-scheduler` options Strata accepts without acting on them, and why.
    static let ignoredSQLSchedulerOptions: [String: String] = [
        "sql-ro": "the scheduler reads and writes through `sql` (its reads decide assignments)",
        "sql-notifier": "each process LISTENs on a connection of its own, opened with `sql`'s settings",
        "poll-interval": "waiting streams re-read every second besides LISTEN/NOTIFY",
        "bot-poll-interval": "waiting bots re-read every second besides LISTEN/NOTIFY",
        "job-assignment-interval": "jobs are assigned when a bot asks, not by a timer",
        "priority-assignment-percentage": "jobs are assigned by priority then age",
        "pruner-period": "completed jobs are pruned by the maintenance pass, every session-expiry-timer-interval",
        "pruner-max-delete-window": "completed jobs are pruned by the maintenance pass",
        "action-browser-url": "Strata has no action browser",
        "queued-action-retention-hours": "queued jobs stay until they run, are cancelled or nobody waits on them (unwatched-operation-timeout)",
        "action-result-retention-hours": "the action cache keeps results",
        "proactive-fetch-to-capacity": "a bot is given work up to its capacity whenever it asks",
        "proactive-fetch-full-queue": "a bot is given work up to its capacity whenever it asks",
        "metering": "Strata does not throttle clients by their metered usage (the top-level metering: is not read either)",
        "metering-throttle-action": "Strata does not throttle clients by their metered usage",
    ]

    /// `!sql-scheduler`: jobs, operations and bot sessions in PostgreSQL (Strata's own tables, made by
    /// `strata migrate` or the first use), shared by every process naming the same database.
    mutating func sqlScheduler(_ node: ConfigNode) throws(ConfigError) -> ConfiguredScheduler {
        let own: Set<String> = ["sql", "completed-action-retention-hours", "execution-timer-interval", "session-expiry-timer-interval",
                                "property-keys", "wildcard-property-keys"]
        let options = try node.mapping(
            allowed: Self.commonSchedulerOptions.union(own).union(Self.ignoredSQLSchedulerOptions.keys),
            unsupported: ["cohort-set", "assigners", "logstream", "asset-client",
                          "instance-pools", "queue-timeout-configs", "queue-timeout-job-max-age", "queue-timeout-period",
                          "queue-timeout-max-window", "instanced-queue-size", "instanced-browser-urls", "pruner-job-max-age",
                          "bot-locality-hint-limit", "eviction-cooldown-seconds"])
        guard let sqlNode = options["sql"] else { throw node.error("!sql-scheduler needs sql: an alias of a !sql-connection") }
        let connection = try sqlConnection(sqlNode)
        let (storage, cache) = try schedulerStorage(node, options)
        var settings = try schedulerSettings(options)
        // BuildGrid's older spelling of a dynamic property set, on the scheduler itself.
        if options["property-keys"] != nil || options["wildcard-property-keys"] != nil {
            if let propertySetNode = options["property-set"] {
                throw propertySetNode.error("give either property-set or property-keys/wildcard-property-keys, not both")
            }
            func keys(_ node: ConfigNode?) throws(ConfigError) -> Set<String> {
                Set(try node?.sequence().map { key throws(ConfigError) in try key.string() } ?? [])
            }
            settings.propertySet = .dynamic(DynamicPropertySet(
                matchPropertyKeys: try keys(options["property-keys"]), wildcardPropertyKeys: try keys(options["wildcard-property-keys"])))
        }
        if let hours = options["completed-action-retention-hours"] {
            // Hours as a number of seconds would be read: the same parser, scaled.
            let value = try hours.secondsNumber()
            guard value > 0 else { throw hours.error("must be more than 0 hours") }
            settings.completedJobRetention = .seconds(value * 3600)
        }
        // One maintenance pass does what BuildGrid's two timers do: it runs at the shorter interval.
        var intervals: [Duration] = []
        for key in ["execution-timer-interval", "session-expiry-timer-interval"] {
            if let entry = options[key] { intervals.append(try entry.seconds()) }
        }
        if let shortest = intervals.min() { settings.maintenanceInterval = shortest }
        for (key, reason) in Self.ignoredSQLSchedulerOptions.sorted(by: { $0.key < $1.key }) {
            if let entry = options[key] { ignore(entry, because: reason) }
        }
        let scheduler = SQLScheduler(connection: connection, settings: settings, logger: Logger(label: "strata.sql-scheduler"))
        return ConfiguredScheduler(
            name: node.path, backend: ExecutionBackend(scheduler: scheduler, storage: storage, actionCache: cache))
    }

    /// A scheduler's `storage` (required: where Execute reads actions) and `action-cache` (optional).
    mutating func schedulerStorage(
        _ node: ConfigNode, _ options: [String: ConfigNode]
    ) throws(ConfigError) -> (storage: any BlobStore, cache: (any ActionCache)?) {
        guard let storageNode = options["storage"] else {
            throw node.error("\(node.applicationTag ?? "a scheduler") needs a storage: the CAS actions are read from")
        }
        let storage = try self.storage(storageNode)
        let cache = try options["action-cache"].map { cacheNode throws(ConfigError) in try self.cache(cacheNode) }
        return (storage, cache)
    }

    /// The options every scheduler shares (`commonSchedulerOptions` but the storage and cache), for
    /// each scheduler tag.
    mutating func schedulerSettings(_ options: [String: ConfigNode]) throws(ConfigError) -> SchedulerSettings {
        var settings = SchedulerSettings()
        if let node = options["max-execution-timeout"] { settings.maxExecutionTimeout = try node.seconds() }
        if let node = options["bot-session-keepalive-timeout"] { settings.botSessionKeepaliveTimeout = try node.seconds() }
        if let node = options["max-job-attempts"] { settings.maxJobAttempts = try node.int(minimum: 1) }
        if let node = options["max-queue-size"] { settings.maxQueueSize = try node.int(minimum: 1) }
        if let node = options["unwatched-operation-timeout"] {
            let timeout = try node.seconds(allowZero: true)
            settings.unwatchedOperationTimeout = timeout == .zero ? nil : timeout
        }
        if let node = options["completed-job-retention"] { settings.completedJobRetention = try node.seconds() }
        if let node = options["property-set"] { settings.propertySet = try propertySet(node) }
        return settings
    }

    /// `!dynamic-property-set` or `!static-property-set`, as BuildGrid configures them.
    func propertySet(_ node: ConfigNode) throws(ConfigError) -> PropertySet {
        func keys(_ node: ConfigNode?) throws(ConfigError) -> Set<String> {
            Set(try node?.sequence().map { key throws(ConfigError) in try key.string() } ?? [])
        }
        switch node.applicationTag {
        case "!dynamic-property-set":
            let options = try node.mapping(
                allowed: ["match-property-keys", "wildcard-property-keys"],
                unsupported: ["unique-property-keys", "label-key", "preferred-property-keys"])
            return .dynamic(DynamicPropertySet(
                matchPropertyKeys: try keys(options["match-property-keys"]), wildcardPropertyKeys: try keys(options["wildcard-property-keys"])))
        case "!static-property-set":
            let options = try node.mapping(
                allowed: ["property-labels", "wildcard-property-keys"], unsupported: ["exclusive-property-keys", "preferred-property-keys"])
            guard let labelsNode = options["property-labels"] else {
                throw node.error("!static-property-set needs property-labels: a list of {label, properties: [[KEY, VALUE], ...]}")
            }
            var labels: [(label: String, properties: Set<PlatformProperty>)] = []
            for entry in try labelsNode.sequence() {
                let fields = try entry.mapping(allowed: ["label", "properties"])
                guard let label = fields["label"], let properties = fields["properties"] else {
                    throw entry.error("a property label needs a label and its properties, e.g. {label: linux, properties: [[OSFamily, linux]]}")
                }
                var set: Set<PlatformProperty> = []
                for pair in try properties.sequence() {
                    let items = try pair.sequence()
                    guard items.count == 2 else { throw pair.error("expected a [KEY, VALUE] pair") }
                    set.insert(PlatformProperty(name: try items[0].string(), value: try items[1].string()))
                }
                labels.append((try label.string(), set))
            }
            guard !labels.isEmpty else { throw labelsNode.error("!static-property-set needs at least one property label") }
            return .static(StaticPropertySet(propertyLabels: labels, wildcardPropertyKeys: try keys(options["wildcard-property-keys"])))
        default:
            throw unknownTag(node, kind: "property set", known: ["!dynamic-property-set", "!static-property-set"])
        }
    }

    /// An instance's `!execution`: Execution, Operations and Bots by its `endpoints` (BuildGrid's
    /// default: all three).
    mutating func executionService(_ service: ConfigNode, into instance: inout Instance) throws(ConfigError) {
        let options = try service.mapping(
            allowed: ["scheduler", "endpoints", "operation-stream-keepalive-timeout", "max-list-operations-page-size",
                      "log-action-input-size", "bots-long-poll-during-execution"],
            unsupported: ["command-allowlist"])
        guard let schedulerNode = options["scheduler"] else { throw service.error("!execution needs a scheduler") }
        let scheduler = try self.scheduler(schedulerNode)
        var endpoints: Set<String> = ["execution", "operations", "bots"]
        if let node = options["endpoints"] {
            endpoints = []
            for entry in try node.sequence() {
                let endpoint = try entry.string()
                guard ["execution", "operations", "bots"].contains(endpoint) else {
                    throw entry.error("unknown endpoint \"\(endpoint)\"; expected execution, operations or bots")
                }
                endpoints.insert(endpoint)
            }
            guard !endpoints.isEmpty else { throw node.error("endpoints lists none of execution, operations, bots") }
        }
        var serviceOptions = ExecutionServiceOptions()
        if let node = options["operation-stream-keepalive-timeout"] { serviceOptions.operationStreamKeepalive = try node.seconds() }
        if let node = options["max-list-operations-page-size"] { serviceOptions.maxListOperationsPageSize = try node.int(minimum: 1) }
        if let node = options["log-action-input-size"], try node.bool() {
            ignore(node, because: "Strata does not compute input root sizes when queuing")
        }
        if let node = options["bots-long-poll-during-execution"] { try longPollDuringExecution(node) }
        let endpoint = ExecutionEndpoint(backend: scheduler.backend, options: serviceOptions)
        if endpoints.contains("execution") {
            guard instance[Instance.Execution.self] == nil else { throw service.error("an instance has one Execution service") }
            instance[Instance.Execution.self] = endpoint
            instance[Instance.RemoteExecution.self] = true
        }
        if endpoints.contains("operations") {
            guard instance[Instance.Operations.self] == nil else { throw service.error("an instance has one Operations service") }
            instance[Instance.Operations.self] = endpoint
        }
        if endpoints.contains("bots") {
            guard instance[Instance.Bots.self] == nil else { throw service.error("an instance has one Bots service") }
            instance[Instance.Bots.self] = scheduler.backend
        }
    }

    /// An instance's `!bots`: the Bots service alone (the bots process of BuildGrid's split).
    mutating func botsService(_ service: ConfigNode, into instance: inout Instance) throws(ConfigError) {
        let options = try service.mapping(allowed: ["scheduler", "long-poll-during-execution"])
        guard let schedulerNode = options["scheduler"] else { throw service.error("!bots needs a scheduler") }
        let scheduler = try self.scheduler(schedulerNode)
        if let node = options["long-poll-during-execution"] { try longPollDuringExecution(node) }
        guard instance[Instance.Bots.self] == nil else { throw service.error("an instance has one Bots service") }
        instance[Instance.Bots.self] = scheduler.backend
    }

    private mutating func longPollDuringExecution(_ node: ConfigNode) throws(ConfigError) {
        if try node.bool() {
            ignore(node, because: "Strata's UpdateBotSession long-polls only while the bot has spare capacity, and answers at once when one of its jobs is cancelled")
        }
    }

    /// What serving execution adds to a configuration: the module (when an instance has one of its
    /// services), each scheduler's periodic work and, with monitoring, the metrics that poll them.
    mutating func servingExecution(_ configuration: inout Configuration) {
        let schedulers = objects.values.compactMap { $0 as? ConfiguredScheduler }.sorted { $0.name < $1.name }
        let serves = configuration.instances.contains {
            $0.has(Instance.Execution.self) || $0.has(Instance.Operations.self) || $0.has(Instance.Bots.self)
        }
        var metrics: ExecutionMetrics?
        if let factory = metricsFactory, !schedulers.isEmpty {
            let built = ExecutionMetrics(factory: factory, schedulers: schedulers.map { ($0.name, $0.backend.scheduler) })
            configuration.backgroundServices.append(built)
            metrics = built
        }
        configuration.backgroundServices += schedulers.map { SchedulerService($0.backend.scheduler) }
        if serves { configuration.modules.append(ExecutionModule(metrics: metrics)) }
    }
}
