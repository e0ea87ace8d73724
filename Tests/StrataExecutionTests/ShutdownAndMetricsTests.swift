import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ServiceLifecycle
import StrataAPI
import StrataActionCache
import StrataCore
import StrataExecution
import StrataMetrics
import StrataScheduler
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct ShutdownAndMetricsTests {
    /// `strata serve` runs the server in a service group: its graceful shutdown (SIGTERM) ends an
    /// Execute stream with UNAVAILABLE (what Bazel retries; an OK end without a result it does not),
    /// the operation not done, and the job stays with the scheduler: a client resumes with
    /// WaitExecution on the next server. gRPC cancels every RPC as its graceful shutdown starts, which
    /// raced the service group's shutdown handler (the stream then ended OK); started by the server
    /// alone (`throughServiceGroup` false) only gRPC's cancellation reaches the stream.
    @Test(arguments: [true, false])
    func aShutdownEndsExecuteStreamsWithUnavailableAndTheJobSurvives(throughServiceGroup: Bool) async throws {
        let scheduler = InMemoryScheduler(settings: SchedulerSettings())
        let store = LRUBlobStore(capacityBytes: 16 << 20)
        let backend = ExecutionBackend(scheduler: scheduler, storage: store, actionCache: nil)
        var instance = Instance(name: ExecutionServer.instance, cas: .init(store: store))
        instance[Instance.Execution.self] = ExecutionEndpoint(backend: backend)
        let registry = InstanceRegistry([instance])
        func makeServer() throws -> StrataServer {
            try StrataServer(
                registry: registry, modules: [ExecutionModule()], addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))],
                shutdownTimeout: .seconds(30))
        }
        let digest = try await Self.storeAction(store)

        let first = try makeServer()
        let group = ServiceGroup(configuration: .init(services: [.init(service: first)], logger: Logger(label: "test")))
        let running = Task { if throughServiceGroup { try await group.run() } else { try await first.run() } }
        guard case .tcp(_, let port) = try await first.listeningAddresses()[0].kind else { fatalError("tcp expected") }
        let started = ContinuousClock.now
        let (operations, ending) = try await withExecutionClient(port: port) { client in
            try await client.execute(.with {
                $0.instanceName = ExecutionServer.instance
                $0.actionDigest = digest.proto
            }) { response -> ([Google_Longrunning_Operation], RPCError?) in
                var operations: [Google_Longrunning_Operation] = []
                do {
                    for try await operation in response.messages {
                        operations.append(operation)
                        // The first message says the job is queued: now shut the server down.
                        if operations.count == 1 {
                            if throughServiceGroup { await group.triggerGracefulShutdown() } else { first.beginGracefulShutdown() }
                        }
                    }
                } catch let error as RPCError {
                    return (operations, error)
                }
                return (operations, nil)
            }
        }
        #expect(ending?.code == .unavailable, "\(String(describing: ending))")
        #expect(ending?.message.contains("WaitExecution") == true)
        try await running.value
        // Ended by the shutdown, not by the 30 s shutdown deadline closing the connection.
        #expect(ContinuousClock.now - started < .seconds(20))
        #expect(operations.count == 1)
        #expect(operations.allSatisfy { !$0.done })
        let name = try #require(operations.first?.name)

        let second = try makeServer()
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await second.run() }
            guard case .tcp(_, let port) = try await second.listeningAddresses()[0].kind else { fatalError("tcp expected") }
            let resumed = try await withExecutionClient(port: port) { client in
                try await client.waitExecution(.with { $0.name = name }) { response -> Google_Longrunning_Operation? in
                    for try await operation in response.messages { return operation }
                    return nil
                }
            }
            #expect(resumed?.name == name)
            #expect(resumed?.stage == .queued)
            second.beginGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    /// A client that stops following its operation is logged CANCELLED: not UNAVAILABLE, which says the
    /// server closed the stream, nor OK. The job goes on.
    @Test func aClientLeavingAnExecuteStreamIsLoggedCancelled() async throws {
        let scheduler = InMemoryScheduler(settings: SchedulerSettings())
        let store = LRUBlobStore(capacityBytes: 16 << 20)
        let backend = ExecutionBackend(scheduler: scheduler, storage: store, actionCache: nil)
        var instance = Instance(name: ExecutionServer.instance, cas: .init(store: store))
        instance[Instance.Execution.self] = ExecutionEndpoint(backend: backend)
        let log = CapturedLog()
        let server = try StrataServer(
            registry: InstanceRegistry([instance]), modules: [ExecutionModule()],
            addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))], shutdownTimeout: .seconds(5), accessLog: log.logger())
        let digest = try await Self.storeAction(store)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await server.run() }
            guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
            let name = try await withExecutionClient(port: port) { client in
                try await client.execute(.with {
                    $0.instanceName = ExecutionServer.instance
                    $0.actionDigest = digest.proto
                }) { response -> String? in
                    for try await operation in response.messages { return operation.name }  // and leave
                    return nil
                }
            }
            let line = await log.entry { $0.message.hasPrefix("Execute ") }
            #expect(line?.message == "Execute CANCELLED", "\(String(describing: line))")
            let operation = try await scheduler.operation(try #require(name))
            #expect(operation.stage == .queued)
            server.beginGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    /// `strata serve` exited 1 ("CancellationError()") on SIGTERM when the scheduler's periodic work
    /// threw its cancellation out of the service group.
    @Test func theSchedulersWorkStopsQuietlyOnAGracefulShutdown() async throws {
        let scheduler = InMemoryScheduler(settings: SchedulerSettings())
        let monitoring = Monitoring(prometheus: true, statsD: [], logger: Logger(label: "test"))
        let metrics = ExecutionMetrics(factory: monitoring.factory, schedulers: [("s", scheduler)], interval: .milliseconds(50))
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: SchedulerService(scheduler)), .init(service: metrics)], logger: Logger(label: "test")))
        let running = Task { try await group.run() }
        try await Task.sleep(for: .milliseconds(300))
        await group.triggerGracefulShutdown()
        try await running.value
    }

    @Test func schedulerStatisticsBecomeGaugesAndLeasesAreTimed() async throws {
        let monitoring = Monitoring(prometheus: true, statsD: [], logger: Logger(label: "test"))
        let scheduler = InMemoryScheduler(settings: SchedulerSettings())
        let metrics = ExecutionMetrics(factory: monitoring.factory, schedulers: [("schedulers[0]", scheduler)])
        let store = LRUBlobStore(capacityBytes: 16 << 20)
        let digest = try await Self.storeAction(store)
        let action = try ActionMessage(serializedBytes: try await store.readAll(digest))
        _ = try await scheduler.queue(ExecutionRequest(
            instanceName: "main", actionDigest: digest, action: action, platform: [PlatformProperty(name: "OSFamily", value: "linux")]))
        metrics.record(try await scheduler.statistics(), scheduler: "schedulers[0]")
        metrics.recordLease(duration: .milliseconds(1500))
        metrics.countRequeue(reason: "bot")
        let text = try #require(monitoring.prometheusText())
        #expect(text.contains(#"strata_execution_queued_jobs{scheduler="schedulers[0]",platform="OSFamily=linux"} 1"#), "\(text)")
        #expect(text.contains(#"strata_execution_jobs{scheduler="schedulers[0]",stage="queued"} 1"#), "\(text)")
        #expect(text.contains(#"strata_execution_bot_sessions{scheduler="schedulers[0]"} 0"#), "\(text)")
        #expect(text.contains("strata_execution_lease_duration_seconds_count 1"), "\(text)")
        #expect(text.contains(#"strata_execution_requeues_total{reason="bot"} 1"#), "\(text)")

        // Every execution metric the README lists (StrataServerTests checks the others).
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md")
        let listed = try String(contentsOf: readme, encoding: .utf8).split(separator: "\n").compactMap { line -> String? in
            line.hasPrefix("| `strata_execution_") ? String(line.dropFirst(3).prefix { $0 != "`" }) : nil
        }
        #expect(listed.count == 5)
        for name in listed { #expect(text.contains("\n\(name)"), "\(name) is listed in the README but not served") }

        // A platform no longer queued reads 0, not its last value.
        let session = try await scheduler.createBotSession(BotRegistration(
            instanceName: "main", botID: "bot", platform: [PlatformProperty(name: "OSFamily", value: "linux")]))
        _ = try await scheduler.assignJobs(session: session.name, count: 1, deadline: .now)
        metrics.record(try await scheduler.statistics(), scheduler: "schedulers[0]")
        let after = try #require(monitoring.prometheusText())
        #expect(after.contains(#"strata_execution_queued_jobs{scheduler="schedulers[0]",platform="OSFamily=linux"} 0"#), "\(after)")
        #expect(after.contains(#"strata_execution_jobs{scheduler="schedulers[0]",stage="executing"} 1"#), "\(after)")

        // A session closed with its job executing counts one requeue, once however often it is read.
        try await scheduler.closeBotSession(session.name, reason: "terminating")
        metrics.record(try await scheduler.statistics(), scheduler: "schedulers[0]")
        metrics.record(try await scheduler.statistics(), scheduler: "schedulers[0]")
        let closed = try #require(monitoring.prometheusText())
        #expect(closed.contains(#"strata_execution_requeues_total{reason="session-closed"} 1"#), "\(closed)")
        #expect(closed.contains(#"strata_execution_requeues_total{reason="bot"} 1"#), "\(closed)")
    }

    static func storeAction(_ store: LRUBlobStore) async throws -> Digest {
        let command: Data = try Build_Bazel_Remote_Execution_V2_Command.with { $0.arguments = ["true"] }.serializedBytes()
        try await store.write(Digest.of(command), data: command)
        let action: Data = try ActionMessage.with {
            $0.commandDigest = Digest.of(command).proto
            $0.inputRootDigest = Digest.empty().proto
        }.serializedBytes()
        let digest = Digest.of(action)
        try await store.write(digest, data: action)
        return digest
    }
}

func withExecutionClient<T: Sendable>(port: Int, _ body: @Sendable (ExecutionClient) async throws -> T) async throws -> T {
    let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
    return try await withGRPCClient(transport: transport) { client in try await body(ExecutionClient(wrapping: client)) }
}
