import Foundation
import StrataConfig
import StrataExecution
import StrataScheduler
import StrataServer
import StrataSQL
import Testing

/// `schedulers:`, the property sets, and the `!execution` and `!bots` services.
@Suite struct ExecutionConfigTests {
    let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "exec.yml", environment: ["HOME": "/nonexistent/strata-exec"])
    }

    func expectError(_ yaml: String, line: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try parse(yaml)
            Issue.record("accepted: \(yaml)", sourceLocation: sourceLocation)
        } catch let error as ConfigError {
            #expect(error.line == line, "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected one ConfigError, got \(error)", sourceLocation: sourceLocation)
        }
    }

    /// A one-process execution server; `scheduler` and `services` are spliced in.
    func yaml(scheduler: String = "{storage: *cas, action-cache: *ac}", services: String = "- !execution {scheduler: *scheduler}") -> String {
        """
        server: [!channel {address: "127.0.0.1:50051"}]
        storages: [!lru-storage &cas {size: 1M}]
        caches: [!lru-action-cache &ac {max-cached-refs: 10}]
        schedulers:
          - !memory-scheduler &scheduler \(scheduler)
        instances:
          - name: main
            services:
              - !cas {storage: *cas}
              \(services)
        """
    }

    @Test func executionServesAllThreeEndpointsByDefault() throws {
        let configuration = try parse(yaml())
        let instance = try #require(configuration.instances.first)
        #expect(instance.has(Instance.Execution.self))
        #expect(instance.has(Instance.Operations.self))
        #expect(instance.has(Instance.Bots.self))
        #expect(instance[Instance.RemoteExecution.self] == true)
        #expect(configuration.modules.contains { $0 is ExecutionModule })
        // The scheduler's periodic work runs beside the server; loading started nothing.
        #expect(configuration.backgroundServices.contains { $0 is SchedulerService })
        let endpoint = try #require(instance[Instance.Execution.self])
        #expect(endpoint.options == ExecutionServiceOptions())
        #expect(endpoint.backend.actionCache != nil)
        #expect(endpoint.backend.scheduler is InMemoryScheduler)
    }

    @Test func everySchedulerOption() throws {
        let configuration = try parse(yaml(scheduler: """

                storage: *cas
                max-execution-timeout: 120
                bot-session-keepalive-timeout: 30
                max-job-attempts: 3
                max-queue-size: 1000
                unwatched-operation-timeout: 0
                completed-job-retention: 60
                property-set: !dynamic-property-set
                  match-property-keys: [OSFamily, ISA, chroot]
                  wildcard-property-keys: [label]
            """))
        let settings = try #require(configuration.instances.first?[Instance.Execution.self]?.backend.scheduler.settings)
        #expect(settings.maxExecutionTimeout == .seconds(120))
        #expect(settings.botSessionKeepaliveTimeout == .seconds(30))
        #expect(settings.maxJobAttempts == 3)
        #expect(settings.maxQueueSize == 1000)
        #expect(settings.unwatchedOperationTimeout == nil)
        #expect(settings.completedJobRetention == .seconds(60))
        #expect(settings.propertySet == .dynamic(DynamicPropertySet(matchPropertyKeys: ["chroot"], wildcardPropertyKeys: ["label"])))
        #expect(configuration.instances.first?[Instance.Execution.self]?.backend.actionCache == nil)
    }

    @Test func staticPropertySet() throws {
        let configuration = try parse(yaml(scheduler: """

                storage: *cas
                property-set: !static-property-set
                  property-labels:
                    - label: linux-x86
                      properties: [[OSFamily, linux], [ISA, x86-64]]
                  wildcard-property-keys: [label]
            """))
        let settings = try #require(configuration.instances.first?[Instance.Execution.self]?.backend.scheduler.settings)
        #expect(settings.propertySet == .static(StaticPropertySet(
            propertyLabels: [("linux-x86", [PlatformProperty(name: "OSFamily", value: "linux"), PlatformProperty(name: "ISA", value: "x86-64")])],
            wildcardPropertyKeys: ["label"])))
    }

    @Test func executionOptionsAndEndpoints() throws {
        let configuration = try parse(yaml(services: """
            - !execution
                    scheduler: *scheduler
                    endpoints: [execution, operations]
                    operation-stream-keepalive-timeout: 5
                    max-list-operations-page-size: 50
                    log-action-input-size: true
            """))
        let instance = try #require(configuration.instances.first)
        #expect(!instance.has(Instance.Bots.self))
        #expect(instance[Instance.Operations.self]?.options == ExecutionServiceOptions(operationStreamKeepalive: .seconds(5), maxListOperationsPageSize: 50))
        #expect(configuration.warnings.contains { $0.contains("log-action-input-size is ignored") }, "\(configuration.warnings)")
    }

    @Test func botsAloneAndSharedSchedulers() throws {
        let configuration = try parse(yaml(services: """
            - !bots {scheduler: *scheduler, long-poll-during-execution: true}
            """))
        let instance = try #require(configuration.instances.first)
        #expect(instance.has(Instance.Bots.self))
        #expect(!instance.has(Instance.Execution.self))
        #expect(instance[Instance.RemoteExecution.self] == nil)
        #expect(configuration.warnings.contains { $0.contains("long-poll-during-execution is ignored") })
    }

    @Test func withoutExecutionNothingIsAdded() throws {
        let configuration = try parse("""
            server: [!channel {address: "127.0.0.1:50051"}]
            storages: [!lru-storage &cas {size: 1M}]
            instances: [{name: "", services: [!cas {storage: *cas}]}]
            """)
        #expect(!configuration.modules.contains { $0 is ExecutionModule })
        #expect(!configuration.backgroundServices.contains { $0 is SchedulerService })
    }

    @Test func exampleConfigurationLoads() throws {
        let configuration = try Configuration.load(file: root + "/config/execution.yml", environment: ["HOME": "/nonexistent/strata-exec"])
        let instance = try #require(configuration.instances.first)
        #expect(instance.has(Instance.Execution.self) && instance.has(Instance.Operations.self) && instance.has(Instance.Bots.self))
        #expect(instance.cas != nil && instance.byteStream != nil && instance.actionCache != nil)
    }

    /// config/split/: the three processes of BuildGrid's split, each serving only its part; the
    /// execution and bots processes on one SQL scheduler, reaching storage remotely.
    @Test func splitConfigurationsLoad() throws {
        let environment = [
            "STRATA_STORAGE_ADDRESS": "127.0.0.1:50051", "STRATA_EXECUTION_ADDRESS": "127.0.0.1:50052",
            "STRATA_BOTS_ADDRESS": "127.0.0.1:50053", "STRATA_STORAGE_PATH": "/nonexistent/strata-split",
            "STRATA_POSTGRES_URL": "postgresql://strata@127.0.0.1:5432/strata",
        ]
        func load(_ name: String) throws -> Instance {
            let configuration = try Configuration.load(file: root + "/config/split/\(name).yml", environment: environment)
            #expect(configuration.instances.count == 1)
            return try #require(configuration.instances.first)
        }
        let storage = try load("storage")
        #expect(storage.cas != nil && storage.byteStream != nil && storage.actionCache != nil)
        #expect(!storage.has(Instance.Execution.self) && !storage.has(Instance.Bots.self))
        let execution = try load("execution")
        #expect(execution.has(Instance.Execution.self) && execution.has(Instance.Operations.self) && !execution.has(Instance.Bots.self))
        #expect(execution.cas == nil)
        #expect(execution[Instance.Execution.self]?.backend.scheduler is SQLScheduler)
        let bots = try load("bots")
        #expect(bots.has(Instance.Bots.self) && !bots.has(Instance.Execution.self) && !bots.has(Instance.Operations.self))
        #expect(bots[Instance.Bots.self]?.scheduler is SQLScheduler)
    }

    /// `!sql-scheduler`: BuildGrid's options, its older property keys, the ones Strata ignores named in
    /// warnings, the ones it lacks refused; loading opens no connection.
    @Test func sqlScheduler() throws {
        let base = """
            server: [!channel {address: "127.0.0.1:50051"}]
            connections: [!sql-connection &pg {connection-string: "postgresql://strata@127.0.0.1:1/strata"}]
            storages: [!lru-storage &cas {size: 1M}]
            caches: [!lru-action-cache &ac {max-cached-refs: 10}]
            schedulers:
              - !sql-scheduler &scheduler
                sql: *pg
                storage: *cas
                action-cache: *ac
            """
        let services = """

            instances:
              - name: ""
                services: [!execution {scheduler: *scheduler}]
            """
        let configuration = try parse(base + """

                max-execution-timeout: 60
                bot-session-keepalive-timeout: 30
                max-job-attempts: 3
                session-expiry-timer-interval: 5
                execution-timer-interval: 2
                completed-action-retention-hours: 0.5
                property-keys: [OSFamily, pool]
                wildcard-property-keys: [label]
                sql-notifier: *pg
                poll-interval: 1
            """ + services)
        let endpoint = try #require(configuration.instances.first?[Instance.Execution.self])
        let settings = endpoint.backend.scheduler.settings
        #expect(endpoint.backend.scheduler is SQLScheduler)
        #expect(settings.maxExecutionTimeout == .seconds(60))
        #expect(settings.botSessionKeepaliveTimeout == .seconds(30))
        #expect(settings.maxJobAttempts == 3)
        #expect(settings.maintenanceInterval == .seconds(2))
        #expect(settings.completedJobRetention == .seconds(1800))
        #expect(settings.propertySet == .dynamic(DynamicPropertySet(matchPropertyKeys: ["OSFamily", "pool"], wildcardPropertyKeys: ["label"])))
        #expect(configuration.warnings.contains { $0.contains("sql-notifier is ignored") }, "\(configuration.warnings)")
        #expect(configuration.warnings.contains { $0.contains("poll-interval is ignored") }, "\(configuration.warnings)")
        expectError(base + "\n    cohort-set: {}" + services, line: 10, "cohort-set")
        expectError("""
            server: [!channel {address: "127.0.0.1:50051"}]
            storages: [!lru-storage &cas {size: 1M}]
            schedulers: [!sql-scheduler &scheduler {storage: *cas}]
            """ + services, line: 3, "!sql-scheduler needs sql")
        expectError(base + "\n    property-keys: [OSFamily]\n    property-set: !dynamic-property-set {}" + services, line: 11, "not both")
    }

    @Test func errors() {
        expectError(yaml(scheduler: "{action-cache: *ac}"), line: 5, "!memory-scheduler needs a storage")
        expectError(yaml(scheduler: "{storage: *cas, max-job-attempts: 0}"), line: 5, "must be at least 1")
        expectError(yaml(scheduler: "{storage: *cas, max-queue-size: lots}"), line: 5, "expected an integer")
        expectError(yaml(scheduler: "{storage: *cas, max-execution-timeout: soon}"), line: 5, "expected a number of seconds")
        expectError(yaml(scheduler: "{storage: *cas, assigners: []}"), line: 5, "unknown option \"assigners\"")
        expectError(yaml(scheduler: "{storage: *cas, property-set: !dynamic-property-set {unique-property-keys: [a]}}"), line: 5,
                    "option \"unique-property-keys\" is not supported by Strata yet")
        expectError(yaml(scheduler: "{storage: *cas, property-set: !static-property-set {}}"), line: 5, "needs property-labels")
        expectError(yaml(scheduler: "{storage: *cas, property-set: !static-property-set {property-labels: [{label: x, properties: [[a]]}]}}"),
                    line: 5, "expected a [KEY, VALUE] pair")
        expectError(yaml(scheduler: "{storage: *cas, property-set: !instanced-property-set {}}"), line: 5,
                    "unknown tag !instanced-property-set")
        expectError(yaml(services: "- !execution {}"), line: 10, "!execution needs a scheduler")
        expectError(yaml(services: "- !bots {}"), line: 10, "!bots needs a scheduler")
        expectError(yaml(services: "- !execution {scheduler: *scheduler, endpoints: [execution, cas]}"), line: 10, "unknown endpoint \"cas\"")
        expectError(yaml(services: "- !execution {scheduler: *scheduler, endpoints: []}"), line: 10, "endpoints lists none")
        expectError(yaml(services: "- !execution {scheduler: *scheduler, command-allowlist: [gcc]}"), line: 10,
                    "option \"command-allowlist\" is not supported by Strata yet")
        expectError(yaml(services: "- !execution {scheduler: *scheduler, max-list-operations-page-size: 0}"), line: 10, "must be at least 1")
        expectError(yaml(services: "- !execution {scheduler: *scheduler, operation-stream-keepalive-timeout: 0}"), line: 10, "must be at least 0.001")
        expectError(yaml(services: "- !execution {scheduler: *scheduler}\n      - !bots {scheduler: *scheduler}"), line: 11,
                    "an instance has one Bots service")
        expectError(yaml(services: "- !execution {scheduler: *cas}"), line: 2, "supported scheduler tags: !memory-scheduler")
    }
}
