import Foundation
import Logging
import PostgresNIO
import StrataAPI
import StrataCore
@testable import StrataSQL
import StrataScheduler
import StrataTestSupport
import Synchronization
import Testing

/// SQLScheduler as several processes see it: each "process" is its own SQLConnection (pool, LISTEN
/// connection) and SQLScheduler on one schema.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLSchedulerTests {
    static let logger = Logger(label: "strata.test.scheduler")

    static var settings: SchedulerSettings {
        var settings = SchedulerSettings()
        settings.unwatchedOperationTimeout = nil
        settings.maintenanceInterval = .milliseconds(100)
        return settings
    }

    /// Runs `body` with `count` connections (processes) to one fresh schema.
    static func processes<T: Sendable>(_ count: Int, _ body: @escaping @Sendable ([SQLConnection]) async throws -> T) async throws -> T {
        let schema = SQLTestDatabase.uniqueSchema()
        let settings = try SQLTestDatabase.settings(url: try SQLTestDatabase.url(), schema: schema)
        let connections = (0..<count).map { _ in SQLConnection(settings: settings) }
        return try await SQLTestDatabase.running(connections) {
            do {
                let result = try await body(connections)
                try await SQLTestDatabase.drop(schema, on: connections[0])
                return result
            } catch {
                try? await SQLTestDatabase.drop(schema, on: connections[0])
                throw error
            }
        }
    }

    static func request(_ platform: [PlatformProperty] = [PlatformProperty(name: "OSFamily", value: "linux")]) -> ExecutionRequest {
        let digest = Blob.random(size: 64).digest
        return ExecutionRequest(
            instanceName: "", actionDigest: digest,
            action: .with { $0.commandDigest = .with { $0.hash = digest.hash; $0.sizeBytes = digest.sizeBytes } },
            platform: platform)
    }

    static let linuxBot = [PlatformProperty(name: "OSFamily", value: "linux")]

    static func response(_ text: String) -> Build_Bazel_Remote_Execution_V2_ExecuteResponse {
        .with { $0.result = .with { $0.stdoutRaw = Data(text.utf8) } }
    }

    /// A's watcher and B's waiting bot wake by NOTIFY alone: their polling is set to an hour, so
    /// without the notifications neither could see the other process's change within the test.
    @Test func twoProcessesWakeEachOtherByNotify() async throws {
        try await Self.processes(2) { connections in
            let a = SQLScheduler(connection: connections[0], settings: Self.settings, logger: Self.logger, pollInterval: .seconds(3600))
            let b = SQLScheduler(connection: connections[1], settings: Self.settings, logger: Self.logger, pollInterval: .seconds(3600))
            let session = try await b.createBotSession(BotRegistration(instanceName: "", botID: "bot-b", platform: Self.linuxBot))
            // Both LISTEN connections up first: a listener connecting later wakes its waiters to re-read,
            // which would hide a missing notification.
            a.ensureListening()
            b.ensureListening()
            let listening = ContinuousClock.now + .seconds(30)
            while !(a.isListening && b.isListening), ContinuousClock.now < listening { try await Task.sleep(for: .milliseconds(20)) }
            #expect(a.isListening && b.isListening)

            // B's bot waits (up to two minutes) for work; A queues; B must have it within 20 s (its
            // polling would take an hour, its deadline two minutes).
            let waiting = Task { try await b.assignJobs(session: session.name, count: 1, deadline: .now + .seconds(120)) }
            try await Task.sleep(for: .milliseconds(300))
            let operation = try await a.queue(Self.request())
            let stream = try await a.watch(operation.name)
            let giveUp = Task {
                try await Task.sleep(for: .seconds(20))
                waiting.cancel()
            }
            let assigned = try await waiting.value
            giveUp.cancel()
            #expect(assigned.map(\.jobID) == [operation.jobID], "B's long-poll got \(assigned.map(\.jobID))")

            // A's watcher sees B's bot run and complete the job.
            try await b.completeJob(operation.jobID, session: session.name, response: Self.response("done"))
            let seen = Mutex<[JobStage]>([])
            let reader = Task { () async throws -> OperationSnapshot? in
                for try await snapshot in stream {
                    seen.withLock { $0.append(snapshot.stage) }
                    if snapshot.isDone { return snapshot }
                }
                return nil
            }
            let timeout = Task {
                // Within 20 s, while without a notification it would re-read after 30 s (its refresh of
                // last_watched) at the earliest.
                try await Task.sleep(for: .seconds(20))
                reader.cancel()
            }
            let final = try await reader.value
            timeout.cancel()
            #expect(final?.stage == .completed, "A's watcher saw \(seen.withLock { $0 })")
            #expect(final?.response?.result.stdoutRaw == Data("done".utf8))
            #expect(final?.botID == "bot-b")
        }
    }

    /// A new scheduler on the same database (a restarted process) sees the queued job, the open session
    /// and its assigned job.
    @Test func restartedProcessSeesQueuedJobsAndSessions() async throws {
        try await Self.processes(2) { connections in
            let (queuedName, sessionName, assignedJob) = try await {
                let before = SQLScheduler(connection: connections[0], settings: Self.settings, logger: Self.logger)
                let running = try await before.queue(Self.request())
                let queued = try await before.queue(Self.request())
                let session = try await before.createBotSession(BotRegistration(instanceName: "", botID: "bot", platform: Self.linuxBot))
                let assigned = try await before.assignJobs(session: session.name, count: 1, deadline: .now)
                #expect(assigned.map(\.jobID) == [running.jobID])
                return (queued.name, session.name, running.jobID)
            }()

            let after = SQLScheduler(connection: connections[1], settings: Self.settings, logger: Self.logger)
            #expect(try await after.operation(queuedName).stage == .queued)
            #expect(try await after.assignedJobs(session: sessionName).map(\.jobID) == [assignedJob])
            _ = try await after.renewBotSession(sessionName, status: .ok)
            let next = try await after.assignJobs(session: sessionName, count: 1, deadline: .now + .seconds(10))
            #expect(next.map(\.jobID) == [try await after.operation(queuedName).jobID])
        }
    }

    /// Sessions of two processes assign concurrently from one queue: every job goes to exactly one session.
    @Test func concurrentAssignmentNeverHandsAJobTwice() async throws {
        try await Self.processes(2) { connections in
            let schedulers = connections.map { SQLScheduler(connection: $0, settings: Self.settings, logger: Self.logger) }
            let jobCount = 60
            var queued = Set<String>()
            for index in 0..<jobCount { queued.insert(try await schedulers[index % 2].queue(Self.request()).jobID) }
            var sessions: [(SQLScheduler, String)] = []
            for index in 0..<8 {
                let scheduler = schedulers[index % 2]
                sessions.append((scheduler, try await scheduler.createBotSession(
                    BotRegistration(instanceName: "", botID: "bot-\(index)", platform: Self.linuxBot, capacity: 3)).name))
            }
            let handed = try await withThrowingTaskGroup(of: [String].self) { group in
                for (scheduler, session) in sessions {
                    group.addTask {
                        var mine: [String] = []
                        // Bounded: at most as many rounds as jobs.
                        for _ in 0..<jobCount {
                            let jobs = try await scheduler.assignJobs(session: session, count: 3, deadline: .now)
                            if jobs.isEmpty { break }
                            mine += jobs.map(\.jobID)
                        }
                        return mine
                    }
                }
                var all: [String] = []
                for try await jobs in group { all += jobs }
                return all
            }
            #expect(handed.count == jobCount, "\(handed.count) assignments for \(jobCount) jobs")
            #expect(Set(handed) == queued)
        }
    }

    /// The same action queued from two processes at once joins one job.
    @Test func concurrentIdenticalActionsShareOneJob() async throws {
        try await Self.processes(2) { connections in
            let schedulers = connections.map { SQLScheduler(connection: $0, settings: Self.settings, logger: Self.logger) }
            let request = Self.request()
            let jobs = try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<12 {
                    group.addTask { try await schedulers[index % 2].queue(request).jobID }
                }
                var jobs: [String] = []
                for try await job in group { jobs.append(job) }
                return jobs
            }
            #expect(jobs.count == 12 && Set(jobs).count == 1, "jobs: \(Set(jobs))")
        }
    }

    /// max-queue-size holds across processes: distinct actions queued from two processes at once fill
    /// the queue exactly, and every one past it is RESOURCE_EXHAUSTED.
    @Test func maxQueueSizeIsExactAcrossProcesses() async throws {
        try await Self.processes(2) { connections in
            var settings = Self.settings
            settings.maxQueueSize = 5
            let schedulers = connections.map { SQLScheduler(connection: $0, settings: settings, logger: Self.logger) }
            let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<16 {
                    group.addTask {
                        do {
                            _ = try await schedulers[index % 2].queue(Self.request())
                            return true
                        } catch let error as StrataError where error.code == .resourceExhausted {
                            return false
                        }
                    }
                }
                var outcomes: [Bool] = []
                for try await outcome in group { outcomes.append(outcome) }
                return outcomes
            }
            #expect(outcomes.filter { $0 }.count == 5, "\(outcomes.filter { $0 }.count) of 16 actions queued under max-queue-size 5")
        }
    }

    /// Two processes run the periodic work at once: an expired session's job is requeued once (one
    /// attempt counted), not twice, and goes to another bot.
    @Test func maintenanceFromTwoProcessesRequeuesOnce() async throws {
        try await Self.processes(2) { connections in
            var settings = Self.settings
            settings.botSessionKeepaliveTimeout = .seconds(1)
            settings.maxJobAttempts = 2
            let schedulers = connections.map { SQLScheduler(connection: $0, settings: settings, logger: Self.logger) }
            let operation = try await schedulers[0].queue(Self.request())
            let silent = try await schedulers[0].createBotSession(BotRegistration(instanceName: "", botID: "silent", platform: Self.linuxBot))
            #expect(try await schedulers[0].assignJobs(session: silent.name, count: 1, deadline: .now).count == 1)
            let maintenance = schedulers.map { scheduler in Task { try await scheduler.run() } }
            defer { for task in maintenance { task.cancel() } }
            let deadline = ContinuousClock.now + .seconds(30)
            while try await schedulers[1].operation(operation.name).stage != .queued, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(try await schedulers[1].operation(operation.name).stage == .queued)
            await #expect(throws: StrataError.self) { _ = try await schedulers[1].assignedJobs(session: silent.name) }
            // Each process counts what it took back itself: once between the two.
            var expired = 0
            for scheduler in schedulers { expired += try await scheduler.statistics().jobsTakenBack[.expired, default: 0] }
            #expect(expired == 1)
            // One attempt used of two: the second bot gets it, and giving it back then aborts it.
            var renewedSettings = settings
            renewedSettings.botSessionKeepaliveTimeout = .seconds(120)
            let other = SQLScheduler(connection: connections[1], settings: renewedSettings, logger: Self.logger)
            let session = try await other.createBotSession(BotRegistration(instanceName: "", botID: "other", platform: Self.linuxBot))
            #expect(try await other.assignJobs(session: session.name, count: 1, deadline: .now + .seconds(10)).map(\.jobID) == [operation.jobID])
            try await other.requeueJob(operation.jobID, session: session.name, reason: "test")
            let final = try await other.operation(operation.name)
            #expect(final.stage == .completed && final.response?.status.code == 10, "\(final)")
        }
    }

    /// A stream open in process A keeps its operation from being cancelled as unwatched by process B's
    /// maintenance (last_watched is shared); an operation nobody watches is cancelled.
    @Test func watchInOneProcessKeepsTheOperationForAnother() async throws {
        try await Self.processes(2) { connections in
            var settings = Self.settings
            settings.unwatchedOperationTimeout = .seconds(4)
            let a = SQLScheduler(connection: connections[0], settings: settings, logger: Self.logger)
            let b = SQLScheduler(connection: connections[1], settings: settings, logger: Self.logger)
            let watched = try await a.queue(Self.request())
            let unwatched = try await a.queue(Self.request())
            let stream = try await a.watch(watched.name)
            let reader = Task { for try await _ in stream {} }
            defer { reader.cancel() }
            let maintenance = Task { try await b.run() }
            defer { maintenance.cancel() }
            let deadline = ContinuousClock.now + .seconds(60)
            while try await b.operation(unwatched.name).stage != .completed, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            let cancelled = try await b.operation(unwatched.name)
            #expect(cancelled.cancelled && cancelled.response?.status.code == 1, "\(cancelled)")
            let kept = try await b.operation(watched.name)
            #expect(kept.stage == .queued && !kept.cancelled, "\(kept)")
        }
    }

    /// Long-polls and watch streams given up by their callers leave no waiter behind.
    @Test func cancelledWaitsReleaseTheirWaiters() async throws {
        try await Self.processes(1) { connections in
            let scheduler = SQLScheduler(connection: connections[0], settings: Self.settings, logger: Self.logger)
            let session = try await scheduler.createBotSession(BotRegistration(instanceName: "", botID: "bot", platform: Self.linuxBot))
            let operation = try await scheduler.queue(Self.request([PlatformProperty(name: "OSFamily", value: "windows")]))
            let deadline = ContinuousClock.now + .seconds(120)
            let assigning = Task { try await scheduler.assignJobs(session: session.name, count: 1, deadline: deadline) }
            let waiting = Task { try await scheduler.waitForChange(session: session.name, deadline: deadline) }
            let watching = Task {
                for try await _ in try await scheduler.watch(operation.name) {}
            }
            let started = ContinuousClock.now + .seconds(30)
            while scheduler.signals.count < 3, ContinuousClock.now < started { try await Task.sleep(for: .milliseconds(20)) }
            #expect(scheduler.signals.count == 3, "waiters registered: \(scheduler.signals.count)")
            assigning.cancel()
            waiting.cancel()
            watching.cancel()
            #expect(try await assigning.value.isEmpty)
            _ = try? await waiting.value
            _ = try? await watching.value
            let released = ContinuousClock.now + .seconds(30)
            while scheduler.signals.count > 0, ContinuousClock.now < released { try await Task.sleep(for: .milliseconds(20)) }
            #expect(scheduler.signals.count == 0, "waiters left: \(scheduler.signals.count)")
            #expect(ContinuousClock.now < deadline - .seconds(60), "the cancelled waits ran to their deadline")
        }
    }

    /// `strata migrate` (SQLConnection.migrate) creates the scheduler's tables with the storage ones.
    @Test func migrateCreatesTheSchedulerTables() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let applied = try await connection.migrate()
            #expect(applied.contains(6) && applied.contains(7))
            let tables = try await connection.withConnection("listing tables") { postgres in
                var names: [String] = []
                for try await name in try await postgres.query(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
                    logger: connection.logger
                ).decode(String.self) { names.append(name) }
                return names
            }
            #expect(Set(["strata_jobs", "strata_operations", "strata_bot_sessions"]).isSubset(of: Set(tables)), "\(tables)")
        }
    }

    /// The database going away: UNAVAILABLE in bounded time, and the scheduler works again after.
    @Test func databaseOutageIsUnavailableThenRecovers() async throws {
        _ = try SQLTestDatabase.url()
        try await PrivatePostgres.with { server in
            let connection = SQLConnection(settings: try SQLOutageTests.settings(server.url, poolTimeout: .seconds(5)))
            let scheduler = SQLScheduler(connection: connection, settings: Self.settings, logger: Self.logger)
            try await SQLTestDatabase.running([connection]) {
                let before = try await scheduler.queue(Self.request())
                let session = try await scheduler.createBotSession(BotRegistration(instanceName: "", botID: "bot", platform: Self.linuxBot))

                try await onOwnThread { try server.stop() }
                let calls: [(String, @Sendable () async throws -> Void)] = [
                    ("queue", { _ = try await scheduler.queue(Self.request()) }),
                    ("operation", { _ = try await scheduler.operation(before.name) }),
                    ("assignJobs", { _ = try await scheduler.assignJobs(session: session.name, count: 1, deadline: .now + .seconds(1)) }),
                    ("statistics", { _ = try await scheduler.statistics() }),
                ]
                for (name, call) in calls {
                    let (code, elapsed) = await SQLOutageTests.timed(call)
                    #expect(code == .unavailable, "\(name) during the outage answered \(code)")
                    #expect(elapsed < .seconds(30), "\(name) during the outage took \(elapsed)")
                }

                try await onOwnThread { try server.start() }
                let deadline = ContinuousClock.now + .seconds(90)
                var recovered: OperationSnapshot?
                while ContinuousClock.now < deadline, recovered == nil {
                    recovered = try? await scheduler.operation(before.name)
                    if recovered == nil { try await Task.sleep(for: .milliseconds(200)) }
                }
                #expect(recovered?.stage == .queued, "the queued job after the outage: \(String(describing: recovered))")
                let assigned = try await scheduler.assignJobs(session: session.name, count: 1, deadline: .now + .seconds(10))
                #expect(assigned.map(\.jobID) == [before.jobID])
            }
        }
    }
}
