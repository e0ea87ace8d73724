import Foundation
import StrataAPI
import StrataCore
import StrataScheduler
import Synchronization

/// The contract every `Scheduler` must honour (the state machine of Scheduler.swift's doc comment),
/// as named checks a test target runs against its scheduler, like `BlobStoreConformance`:
///
///     @Test(arguments: SchedulerConformance.cases)
///     func conformance(_ check: SchedulerConformance) async throws {
///         try await check.run { settings in InMemoryScheduler(settings: settings) }
///     }
///
/// Each check makes one fresh scheduler from the factory with its own settings (short timeouts where
/// time matters, so the suite runs in seconds), and starts `run()` itself when it needs the periodic
/// work. Waits are bounded with generous margins; nothing asserts a speed.
public struct SchedulerConformance: Sendable, CustomStringConvertible {
    public typealias Factory = @Sendable (SchedulerSettings) async throws -> any Scheduler

    public let name: String
    /// The check's settings, from `baseSettings`.
    public let settings: SchedulerSettings
    let body: @Sendable (any Scheduler) async throws -> Void

    public var description: String { name }

    init(_ name: String, settings configure: (inout SchedulerSettings) -> Void = { _ in }, body: @escaping @Sendable (any Scheduler) async throws -> Void) {
        self.name = name
        var settings = Self.baseSettings
        configure(&settings)
        self.settings = settings
        self.body = body
    }

    public func run(_ makeScheduler: Factory) async throws {
        try await body(try await makeScheduler(settings))
    }

    /// What every check starts from: nothing expires unless the check says so; `pool` is a matched
    /// key, `label` a wildcard one.
    public static var baseSettings: SchedulerSettings {
        var settings = SchedulerSettings()
        settings.botSessionKeepaliveTimeout = .seconds(120)
        settings.maxExecutionTimeout = .seconds(3600)
        settings.maxJobAttempts = 5
        settings.maxQueueSize = nil
        settings.unwatchedOperationTimeout = nil
        settings.completedJobRetention = .seconds(3600)
        settings.propertySet = .dynamic(DynamicPropertySet(matchPropertyKeys: ["pool"], wildcardPropertyKeys: ["label"]))
        settings.maintenanceInterval = .milliseconds(100)
        return settings
    }

    public static let cases: [SchedulerConformance] = [
        .init("queue, assign, complete", body: queueAssignComplete),
        .init("operation names carry the instance", body: operationNames),
        .init("identical in-flight actions share one job", body: dedup),
        .init("doNotCache on either side makes another job", body: doNotCacheNotShared),
        .init("a completed job is not joined", body: completedNotJoined),
        .init("joining with a higher priority raises a queued job's priority", body: joinRaisesPriority),
        .init("assignment by priority, then age", body: assignmentOrder),
        .init("a requeued job keeps its age", body: requeueKeepsAge),
        .init("jobs go only to bots of their instance", body: instanceIsolation),
        .init("platform matching and the waiting reason", body: platformMatching),
        .init("matched and wildcard keys", body: matchedAndWildcardKeys),
        .init("a platform the property set does not allow is FAILED_PRECONDITION", body: unknownProperty),
        .init("maxQueueSize is RESOURCE_EXHAUSTED", settings: { $0.maxQueueSize = 2 }, body: maxQueueSize),
        .init("a cached result is a completed operation", body: cachedResult),
        .init("watch yields the current state, each change, and ends after COMPLETED", body: watchStages),
        .init("NOT_FOUND for unknown operations and sessions", body: notFound),
        .init("cancelling one of two operations: the job continues", body: cancelOneOfTwo),
        .init("cancelling every operation cancels the job", body: cancelAll),
        .init("cancelling a queued job: never assigned", body: cancelQueued),
        .init("waitForChange wakes when a job of the session is cancelled", body: waitForChangeWakes),
        .init("deleteOperation", body: deleteOperation),
        .init("a late completeJob from another session is ignored", body: lateCompletion),
        .init("closing a session or a new one of the same bot requeues, counting attempts",
              settings: { $0.maxJobAttempts = 3 }, body: closeAndReplaceRequeue),
        .init("maxJobAttempts exhausted is ABORTED", settings: { $0.maxJobAttempts = 2 }, body: attemptsExhausted),
        .init("a silent session expires and its jobs are requeued by run()",
              settings: { $0.botSessionKeepaliveTimeout = .seconds(2) }, body: sessionExpiry),
        .init("a job executing past its timeout is DEADLINE_EXCEEDED",
              settings: { $0.maxExecutionTimeout = .seconds(1) }, body: executionTimeout),
        .init("an unwatched operation is cancelled, a watched one is not",
              settings: { $0.unwatchedOperationTimeout = .seconds(1) }, body: unwatchedCancelled),
        .init("listOperations: unfinished by default, sorted, filtered", body: listing),
        .init("listOperations pages with a cursor while jobs are added", body: paging),
        .init("assignJobs waits until its deadline when nothing is queued", body: assignWaitsForDeadline),
        .init("assignJobs answers when a job is queued meanwhile", body: assignWakesOnQueue),
        .init("statistics", body: statisticsCounts),
        .init("lease deliveries are kept with the job until its next assignment", body: leaseDeliveries),
        .init("closing a session ends its long-polls", body: closeEndsLongPolls),
    ]

    // MARK: Helpers

    public static let linux = [PlatformProperty(name: "OSFamily", value: "linux")]
    public static let windows = [PlatformProperty(name: "OSFamily", value: "windows")]

    /// A request for a new action (a random digest) unless `digest` is given.
    public static func request(
        _ digest: Digest? = nil, instance: String = "", platform: [PlatformProperty] = linux, priority: Int32 = 0,
        doNotCache: Bool = false, timeout: Duration? = nil, toolName: String = "conformance"
    ) -> ExecutionRequest {
        let actionDigest = digest ?? Blob.random(size: 64).digest
        var metadata = ClientRequestMetadata()
        metadata.toolName = toolName
        let action = Build_Bazel_Remote_Execution_V2_Action.with {
            $0.commandDigest = .with { $0.hash = actionDigest.hash; $0.sizeBytes = actionDigest.sizeBytes }
            $0.platform = .with { $0.properties = platform.map { p in .with { $0.name = p.name; $0.value = p.value } } }
        }
        return ExecutionRequest(
            instanceName: instance, actionDigest: actionDigest, action: action, platform: platform, priority: priority,
            doNotCache: doNotCache, timeout: timeout, requestMetadata: metadata)
    }

    public static func bot(_ id: String = UUID().uuidString, instance: String = "", platform: [PlatformProperty] = linux, capacity: Int = 1) -> BotRegistration {
        BotRegistration(instanceName: instance, botID: id, platform: platform, capacity: capacity)
    }

    public static func response(_ stdout: String, exitCode: Int32 = 0) -> Build_Bazel_Remote_Execution_V2_ExecuteResponse {
        .with {
            $0.result = .with {
                $0.exitCode = exitCode
                $0.stdoutRaw = Data(stdout.utf8)
            }
        }
    }

    static func take(_ scheduler: any Scheduler, _ session: String, count: Int = 1, within: Duration = .seconds(10)) async throws -> [AssignedJob] {
        try await scheduler.assignJobs(session: session, count: count, deadline: .now + within)
    }

    /// Assigns exactly one job to the session, failing otherwise.
    static func takeOne(_ scheduler: any Scheduler, _ session: String, _ what: String) async throws -> AssignedJob {
        let jobs = try await take(scheduler, session)
        guard jobs.count == 1 else { throw ConformanceFailure("\(what): assignJobs answered \(jobs.count) jobs, expected 1") }
        return jobs[0]
    }

    /// Polls `condition` until it holds, failing after `timeout` (a generous bound, not a speed).
    static func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ConformanceFailure("\(what) did not happen within \(timeout)")
    }

    /// Runs `body` while the scheduler's `run()` does its periodic work.
    static func withMaintenance(_ scheduler: any Scheduler, _ body: () async throws -> Void) async throws {
        let maintenance = Task { try await scheduler.run() }
        defer { maintenance.cancel() }
        try await body()
    }

    static func statusCode(_ snapshot: OperationSnapshot) -> Int32? { snapshot.response?.status.code }

    final class Flag: Sendable {
        private let value = Mutex(false)
        func set() { value.withLock { $0 = true } }
        var isSet: Bool { value.withLock { $0 } }
    }

    /// A watch stream's snapshots as they arrive, read by a task of its own.
    final class Collected: Sendable {
        let snapshots = Mutex<[OperationSnapshot]>([])
        let ended = Mutex(false)
        let task = Mutex<Task<Void, Never>?>(nil)

        init(_ stream: AsyncThrowingStream<OperationSnapshot, any Error>) {
            let reader = Task { [self] in
                do {
                    for try await snapshot in stream { self.snapshots.withLock { $0.append(snapshot) } }
                } catch {}
                self.ended.withLock { $0 = true }
            }
            task.withLock { $0 = reader }
        }

        var all: [OperationSnapshot] { snapshots.withLock { $0 } }
        var hasEnded: Bool { ended.withLock { $0 } }
        func stop() { task.withLock { $0 }?.cancel() }
    }

    // MARK: Checks

    static func queueAssignComplete(_ scheduler: any Scheduler) async throws {
        let request = request()
        let queued = try await scheduler.queue(request)
        try expect(queued.stage == .queued && !queued.cancelled && queued.response == nil, "a new job is not QUEUED: \(queued)")
        try expect(queued.actionDigest == request.actionDigest && queued.platform == linux, "the operation lost the action or platform")
        try expect(try await scheduler.operation(queued.name) == queued, "operation() differs from what queue() answered")
        let session = try await scheduler.createBotSession(bot("bot-1"))
        try expect(session.botID == "bot-1" && session.expireTime > Date(), "the session record is wrong: \(session)")
        let job = try await takeOne(scheduler, session.name, "a matching bot")
        try expect(job.jobID == queued.jobID && job.actionDigest == request.actionDigest && job.action == request.action,
                   "the assigned job is not the queued one")
        try expect(!job.cancelled && !job.doNotCache, "the assigned job is cancelled or doNotCache")
        try expect(try await scheduler.assignedJobs(session: session.name) == [job], "assignedJobs does not list the assigned job")
        let executing = try await scheduler.operation(queued.name)
        try expect(executing.stage == .executing && executing.botID == "bot-1", "an assigned job is not EXECUTING on its bot: \(executing)")
        let response = response("done")
        try await scheduler.completeJob(job.jobID, session: session.name, response: response)
        let completed = try await scheduler.operation(queued.name)
        try expect(completed.stage == .completed && completed.response == response && !completed.cancelled,
                   "a completed job's operation is not COMPLETED with the bot's response: \(completed)")
        try expect(try await scheduler.assignedJobs(session: session.name).isEmpty, "a completed job is still assigned")
        try expect(try await take(scheduler, session.name, within: .milliseconds(200)).isEmpty, "a completed job was assigned again")
    }

    static func operationNames(_ scheduler: any Scheduler) async throws {
        let plain = try await scheduler.queue(request())
        try expect(plain.name.hasPrefix("operations/") && plain.instanceName.isEmpty, "instance \"\" operation named \(plain.name)")
        let named = try await scheduler.queue(request(instance: "team/main"))
        try expect(named.name.hasPrefix("team/main/operations/") && named.instanceName == "team/main", "instance team/main operation named \(named.name)")
        let session = try await scheduler.createBotSession(bot(instance: "team/main"))
        try expect(session.name.hasPrefix("team/main/bots/"), "a team/main bot session named \(session.name)")
        let plainSession = try await scheduler.createBotSession(bot())
        try expect(plainSession.name.hasPrefix("bots/"), "an instance \"\" bot session named \(plainSession.name)")
    }

    static func dedup(_ scheduler: any Scheduler) async throws {
        let digest = Blob.random(size: 64).digest
        let first = try await scheduler.queue(request(digest))
        let second = try await scheduler.queue(request(digest))
        try expect(first.jobID == second.jobID && first.name != second.name, "a second identical action did not join the queued job")
        let other = try await scheduler.queue(request(digest, instance: "other"))
        try expect(other.jobID != first.jobID, "the same action on another instance joined the job")
        let session = try await scheduler.createBotSession(bot())
        let job = try await takeOne(scheduler, session.name, "the shared job")
        try expect(job.jobID == first.jobID, "not the shared job was assigned")
        let third = try await scheduler.queue(request(digest))
        try expect(third.jobID == first.jobID && third.stage == .executing, "an identical action did not join the executing job")
        try expect(try await take(scheduler, session.name, within: .milliseconds(200)).isEmpty, "a joined action made a second job")
        let response = response("shared")
        try await scheduler.completeJob(job.jobID, session: session.name, response: response)
        for name in [first.name, second.name, third.name] {
            let operation = try await scheduler.operation(name)
            try expect(operation.stage == .completed && operation.response == response, "an operation of the shared job did not complete with its response")
        }
    }

    static func doNotCacheNotShared(_ scheduler: any Scheduler) async throws {
        let digest = Blob.random(size: 64).digest
        let cacheable = try await scheduler.queue(request(digest))
        let uncached = try await scheduler.queue(request(digest, doNotCache: true))
        try expect(uncached.jobID != cacheable.jobID, "a doNotCache request joined an in-flight job")
        let other = Blob.random(size: 64).digest
        let uncachedFirst = try await scheduler.queue(request(other, doNotCache: true))
        let cacheableAfter = try await scheduler.queue(request(other))
        try expect(cacheableAfter.jobID != uncachedFirst.jobID, "a request joined an in-flight doNotCache job")
        let session = try await scheduler.createBotSession(bot(capacity: 4))
        let jobs = try await take(scheduler, session.name, count: 4)
        try expect(Set(jobs.map(\.jobID)).count == 4, "four distinct jobs were not all assignable: \(jobs.count)")
        try expect(jobs.first { $0.jobID == uncached.jobID }?.doNotCache == true, "a doNotCache job was assigned without doNotCache")
    }

    static func completedNotJoined(_ scheduler: any Scheduler) async throws {
        let digest = Blob.random(size: 64).digest
        let first = try await scheduler.queue(request(digest))
        let session = try await scheduler.createBotSession(bot())
        let job = try await takeOne(scheduler, session.name, "the first job")
        try await scheduler.completeJob(job.jobID, session: session.name, response: response("first"))
        let again = try await scheduler.queue(request(digest))
        try expect(again.jobID != first.jobID && again.stage == .queued, "a request joined a completed job: \(again)")
    }

    static func joinRaisesPriority(_ scheduler: any Scheduler) async throws {
        let digest = Blob.random(size: 64).digest
        let early = try await scheduler.queue(request(priority: 3))
        let low = try await scheduler.queue(request(digest, priority: 5))
        let urgent = try await scheduler.queue(request(digest, priority: 1))
        try expect(urgent.jobID == low.jobID, "the urgent request did not join the queued job")
        try expect(try await scheduler.operation(low.name).priority == 1, "joining with priority 1 did not raise the job's priority from 5")
        let lower = try await scheduler.queue(request(digest, priority: 9))
        try expect(try await scheduler.operation(lower.name).priority == 1, "joining with priority 9 lowered the job's priority")
        let session = try await scheduler.createBotSession(bot())
        let first = try await takeOne(scheduler, session.name, "the raised job")
        try expect(first.jobID == low.jobID, "the raised job (priority 1) was not assigned before the priority 3 one queued earlier")
        let second = try await takeOne(scheduler, session.name, "the other job")
        try expect(second.jobID == early.jobID, "the priority 3 job was not assigned second")
    }

    static func assignmentOrder(_ scheduler: any Scheduler) async throws {
        var expected: [String: String] = [:]
        let a = try await scheduler.queue(request(priority: 2))
        let b = try await scheduler.queue(request(priority: 1))
        let c = try await scheduler.queue(request(priority: 2))
        let d = try await scheduler.queue(request(priority: 1))
        let e = try await scheduler.queue(request(priority: -1))
        for (snapshot, label) in [(a, "a"), (b, "b"), (c, "c"), (d, "d"), (e, "e")] { expected[snapshot.jobID] = label }
        let session = try await scheduler.createBotSession(bot(capacity: 5))
        var order: [String] = []
        for _ in 0..<5 {
            let job = try await takeOne(scheduler, session.name, "the next job")
            order.append(expected[job.jobID] ?? "?")
        }
        try expect(order == ["e", "b", "d", "a", "c"], "assigned in the order \(order), expected e b d a c (priority, then age)")
    }

    static func requeueKeepsAge(_ scheduler: any Scheduler) async throws {
        let older = try await scheduler.queue(request())
        let newer = try await scheduler.queue(request())
        let session = try await scheduler.createBotSession(bot(capacity: 2))
        let first = try await takeOne(scheduler, session.name, "the older job")
        try expect(first.jobID == older.jobID, "the older job was not assigned first")
        try await scheduler.requeueJob(first.jobID, session: session.name, reason: "lease failed")
        let again = try await takeOne(scheduler, session.name, "the requeued job")
        try expect(again.jobID == older.jobID && again.queuedAt == first.queuedAt,
                   "a requeued job lost its place before a newer job of the same priority (got \(again.jobID == newer.jobID ? "the newer" : "another") job)")
    }

    static func instanceIsolation(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request(instance: "a"))
        let other = try await scheduler.createBotSession(bot(instance: "b"))
        try expect(try await take(scheduler, other.name, within: .milliseconds(300)).isEmpty, "a bot of instance b got a job of instance a")
        let session = try await scheduler.createBotSession(bot(instance: "a"))
        try expect(try await takeOne(scheduler, session.name, "instance a's bot").jobID == queued.jobID, "instance a's bot did not get its job")
    }

    static func platformMatching(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request(platform: windows))
        try expect(queued.waitingReason != nil, "a job no bot can take has no waiting reason")
        let linuxBot = try await scheduler.createBotSession(bot(platform: linux))
        try expect(try await take(scheduler, linuxBot.name, within: .milliseconds(300)).isEmpty, "a linux bot got a windows job")
        let waiting = try await scheduler.operation(queued.name)
        try expect(waiting.waitingReason?.contains("OSFamily=windows") == true,
                   "the waiting reason does not name the property no bot offers: \(waiting.waitingReason ?? "nil")")
        let windowsBot = try await scheduler.createBotSession(bot(platform: windows + [PlatformProperty(name: "pool", value: "x")]))
        try expect(try await scheduler.operation(queued.name).waitingReason == nil, "the waiting reason stayed once a windows bot connected")
        try expect(try await take(scheduler, linuxBot.name, within: .milliseconds(300)).isEmpty, "a linux bot got a windows job")
        let job = try await takeOne(scheduler, windowsBot.name, "the windows bot")
        try expect(job.jobID == queued.jobID, "the windows bot got another job")
        try await scheduler.closeBotSession(linuxBot.name, reason: "test")
        try await scheduler.completeJob(job.jobID, session: windowsBot.name, response: response("ok"))
        // The reason comes back when the last bot that could take the job goes.
        let later = try await scheduler.queue(request(platform: windows))
        try expect(later.waitingReason == nil, "a job a connected bot can take has a waiting reason: \(later.waitingReason ?? "")")
        try await scheduler.closeBotSession(windowsBot.name, reason: "test")
        try expect(try await scheduler.operation(later.name).waitingReason != nil, "no waiting reason once the only windows bot left")
    }

    static func matchedAndWildcardKeys(_ scheduler: any Scheduler) async throws {
        let pool = PlatformProperty(name: "pool", value: "big")
        let label = PlatformProperty(name: "label", value: "anything")
        let needsPool = try await scheduler.queue(request(platform: (linux + [pool]).sorted()))
        let smallBot = try await scheduler.createBotSession(bot(platform: (linux + [PlatformProperty(name: "pool", value: "small")]).sorted()))
        try expect(try await take(scheduler, smallBot.name, within: .milliseconds(300)).isEmpty, "a pool=small bot got a pool=big job")
        let wildcard = try await scheduler.queue(request(platform: (linux + [label]).sorted()))
        let taken = try await takeOne(scheduler, smallBot.name, "a bot without the wildcard key")
        try expect(taken.jobID == wildcard.jobID, "a job with only a wildcard key beyond the bot's properties was not assigned to it")
        let bigBot = try await scheduler.createBotSession(bot(platform: (linux + [pool]).sorted()))
        try expect(try await takeOne(scheduler, bigBot.name, "the pool=big bot").jobID == needsPool.jobID, "the pool=big bot did not get the pool=big job")
    }

    static func unknownProperty(_ scheduler: any Scheduler) async throws {
        do {
            _ = try await scheduler.queue(request(platform: linux + [PlatformProperty(name: "colour", value: "red")]))
            throw ConformanceFailure("a job with an unregistered platform property was queued")
        } catch let error as StrataError {
            try expect(error.code == .failedPrecondition && error.message.contains("colour"),
                       "an unregistered property answered \(error), expected FAILED_PRECONDITION naming it")
        }
        let statistics = try await scheduler.statistics()
        try expect(statistics.jobsByStage[.queued, default: 0] == 0, "a refused job was queued")
    }

    static func maxQueueSize(_ scheduler: any Scheduler) async throws {
        let digest = Blob.random(size: 64).digest
        _ = try await scheduler.queue(request(digest))
        _ = try await scheduler.queue(request())
        try await expectError(.resourceExhausted, "queueing a third job with max-queue-size 2") {
            _ = try await scheduler.queue(request())
        }
        let joined = try await scheduler.queue(request(digest))
        try expect(joined.stage == .queued, "joining a queued job was refused with a full queue")
        let session = try await scheduler.createBotSession(bot())
        _ = try await takeOne(scheduler, session.name, "one of the queued jobs")
        _ = try await scheduler.queue(request())
    }

    static func cachedResult(_ scheduler: any Scheduler) async throws {
        let result = Build_Bazel_Remote_Execution_V2_ActionResult.with { $0.exitCode = 0; $0.stdoutRaw = Data("cached".utf8) }
        let recorded = try await scheduler.recordCachedResult(request(), result: result)
        try expect(recorded.stage == .completed && recorded.response?.cachedResult == true && recorded.response?.result == result,
                   "a cached result is not a COMPLETED operation with cached_result: \(recorded)")
        try expect((recorded.response?.status.code ?? 0) == 0, "a cached result's status is not OK")
        try expect(try await scheduler.operation(recorded.name) == recorded, "operation() of a cached result differs")
        let watched = Collected(try await scheduler.watch(recorded.name))
        try await eventually("the end of a completed operation's watch") { watched.hasEnded }
        try expect(watched.all == [recorded], "watching a completed operation yielded \(watched.all.count) snapshots, expected it once")
        let session = try await scheduler.createBotSession(bot())
        try expect(try await take(scheduler, session.name, within: .milliseconds(200)).isEmpty, "a cached result was assigned to a bot")
    }

    static func watchStages(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request())
        let watched = Collected(try await scheduler.watch(queued.name))
        defer { watched.stop() }
        try await eventually("the watch's first snapshot") { !watched.all.isEmpty }
        try expect(watched.all[0].stage == .queued && watched.all[0].name == queued.name, "a watch did not start with the QUEUED state")
        let session = try await scheduler.createBotSession(bot())
        let job = try await takeOne(scheduler, session.name, "the watched job")
        try await eventually("the watch's EXECUTING snapshot") { watched.all.contains { $0.stage == .executing } }
        try expect(!watched.hasEnded, "the watch ended before COMPLETED")
        let response = response("watched")
        try await scheduler.completeJob(job.jobID, session: session.name, response: response)
        try await eventually("the end of the watch after COMPLETED") { watched.hasEnded }
        let stages = watched.all.map(\.stage)
        try expect(stages == stages.sorted(), "the watch's stages went back: \(stages)")
        try expect(watched.all.last?.stage == .completed && watched.all.last?.response == response,
                   "the watch did not end with the COMPLETED state and its response: \(stages)")
        try expect(watched.all.filter { $0.stage == .completed }.count == 1, "the watch yielded COMPLETED more than once")
    }

    static func notFound(_ scheduler: any Scheduler) async throws {
        let operation = "operations/\(UUID().uuidString.lowercased())"
        try await expectError(.notFound, "operation() of an unknown name") { _ = try await scheduler.operation(operation) }
        try await expectError(.notFound, "watch() of an unknown name") { _ = try await scheduler.watch(operation) }
        try await expectError(.notFound, "cancelOperation of an unknown name") { try await scheduler.cancelOperation(operation) }
        try await expectError(.notFound, "deleteOperation of an unknown name") { try await scheduler.deleteOperation(operation) }
        let session = "bots/\(UUID().uuidString.lowercased())"
        let deadline = ContinuousClock.now + .seconds(5)
        try await expectError(.notFound, "renewing an unknown session") { _ = try await scheduler.renewBotSession(session, status: .ok) }
        try await expectError(.notFound, "assignedJobs of an unknown session") { _ = try await scheduler.assignedJobs(session: session) }
        try await expectError(.notFound, "assignJobs to an unknown session") {
            _ = try await scheduler.assignJobs(session: session, count: 1, deadline: deadline)
        }
        try await expectError(.notFound, "waitForChange of an unknown session") { try await scheduler.waitForChange(session: session, deadline: deadline) }
        try await expectError(.notFound, "completeJob from an unknown session") {
            try await scheduler.completeJob("job", session: session, response: response("x"))
        }
        try await expectError(.notFound, "requeueJob from an unknown session") { try await scheduler.requeueJob("job", session: session, reason: "x") }
        try await expectError(.notFound, "closing an unknown session") { try await scheduler.closeBotSession(session, reason: "x") }
        let closed = try await scheduler.createBotSession(bot())
        try await scheduler.closeBotSession(closed.name, reason: "test")
        try await expectError(.notFound, "renewing a closed session") { _ = try await scheduler.renewBotSession(closed.name, status: .ok) }
        try await expectError(.notFound, "assignJobs to a closed session") {
            _ = try await scheduler.assignJobs(session: closed.name, count: 1, deadline: deadline)
        }
    }

    static func cancelOneOfTwo(_ scheduler: any Scheduler) async throws {
        let digest = Blob.random(size: 64).digest
        let first = try await scheduler.queue(request(digest))
        let second = try await scheduler.queue(request(digest))
        let session = try await scheduler.createBotSession(bot())
        let job = try await takeOne(scheduler, session.name, "the shared job")
        let watched = Collected(try await scheduler.watch(first.name))
        defer { watched.stop() }
        try await scheduler.cancelOperation(first.name)
        let cancelled = try await scheduler.operation(first.name)
        try expect(cancelled.stage == .completed && cancelled.cancelled && statusCode(cancelled) == 1,
                   "a cancelled operation is not COMPLETED with CANCELLED: \(cancelled)")
        try await eventually("the end of the cancelled operation's watch") { watched.hasEnded }
        try expect(watched.all.last.map(statusCode) == 1, "the cancelled operation's watch did not end with CANCELLED")
        let other = try await scheduler.operation(second.name)
        try expect(other.stage == .executing && !other.cancelled, "cancelling one operation stopped the other: \(other)")
        try expect(try await scheduler.assignedJobs(session: session.name).first?.cancelled == false, "the job was cancelled with one operation left")
        let response = response("still wanted")
        try await scheduler.completeJob(job.jobID, session: session.name, response: response)
        try expect(try await scheduler.operation(second.name).response == response, "the remaining operation did not get the result")
        try expect(statusCode(try await scheduler.operation(first.name)) == 1, "the cancelled operation's response changed after the job completed")
        // Cancelling a completed operation does nothing.
        try await scheduler.cancelOperation(second.name)
        let after = try await scheduler.operation(second.name)
        try expect(after.response == response && !after.cancelled, "cancelling a completed operation changed it")
    }

    static func cancelAll(_ scheduler: any Scheduler) async throws {
        let digest = Blob.random(size: 64).digest
        let first = try await scheduler.queue(request(digest))
        let second = try await scheduler.queue(request(digest))
        let session = try await scheduler.createBotSession(bot())
        let job = try await takeOne(scheduler, session.name, "the shared job")
        try await scheduler.cancelOperation(first.name)
        try await scheduler.cancelOperation(second.name)
        for name in [first.name, second.name] {
            let operation = try await scheduler.operation(name)
            try expect(operation.stage == .completed && operation.cancelled && statusCode(operation) == 1,
                       "an operation of a cancelled job is not COMPLETED with CANCELLED: \(operation)")
        }
        let assigned = try await scheduler.assignedJobs(session: session.name)
        try expect(assigned.count == 1 && assigned[0].jobID == job.jobID && assigned[0].cancelled,
                   "the session does not see its job cancelled: \(assigned)")
        // The bot's late result does not overwrite the cancellation, and the lease is gone.
        try await scheduler.completeJob(job.jobID, session: session.name, response: response("too late"))
        try expect(statusCode(try await scheduler.operation(first.name)) == 1, "a result after cancellation replaced CANCELLED")
        try expect(try await scheduler.assignedJobs(session: session.name).isEmpty, "a reported cancelled job is still assigned")
        let again = try await scheduler.queue(request(digest))
        try expect(again.jobID != job.jobID && again.stage == .queued, "a new request joined a cancelled job")
    }

    static func cancelQueued(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request())
        try await scheduler.cancelOperation(queued.name)
        try expect(statusCode(try await scheduler.operation(queued.name)) == 1, "a cancelled queued job is not CANCELLED")
        let session = try await scheduler.createBotSession(bot())
        try expect(try await take(scheduler, session.name, within: .milliseconds(300)).isEmpty, "a cancelled job was assigned")
        let statistics = try await scheduler.statistics()
        try expect(statistics.jobsByStage[.queued, default: 0] == 0, "a cancelled job is still counted QUEUED")
    }

    static func waitForChangeWakes(_ scheduler: any Scheduler) async throws {
        var queued: [OperationSnapshot] = []
        for _ in 0..<5 { queued.append(try await scheduler.queue(request())) }
        let session = try await scheduler.createBotSession(bot(capacity: 5))
        let jobs = try await take(scheduler, session.name, count: 5)
        try expect(jobs.count == 5, "five jobs were not assigned at once: \(jobs.count)")
        let deadline = ContinuousClock.now + .seconds(60)
        let waiter = Task { try await scheduler.waitForChange(session: session.name, deadline: deadline) }
        let woken = Flag()
        let watcher = Task {
            _ = try? await waiter.value
            woken.set()
        }
        // One cancellation a second until the waiter wakes: a waiter that began waiting late (a loaded
        // machine) is woken by a later one rather than waiting for its deadline.
        for operation in queued where !woken.isSet {
            try await Task.sleep(for: .seconds(1))
            try await scheduler.cancelOperation(operation.name)
        }
        try await waiter.value
        _ = await watcher.value
        try expect(ContinuousClock.now < deadline - .seconds(20), "waitForChange did not wake when the session's jobs were cancelled")
        try expect(try await scheduler.assignedJobs(session: session.name).contains { $0.cancelled }, "the woken session does not see a job cancelled")
        // While the bot still holds a cancelled job, a wait answers at once: a cancellation that came
        // between the caller's read and its wait is never slept through.
        let holding = ContinuousClock.now
        try await scheduler.waitForChange(session: session.name, deadline: holding + .seconds(60))
        try expect(ContinuousClock.now < holding + .seconds(20), "waitForChange slept while the session held a cancelled job")
        // The bot lets the cancelled jobs go; with nothing changing, a wait lasts until its deadline.
        for job in try await scheduler.assignedJobs(session: session.name) where job.cancelled {
            try await scheduler.completeJob(job.jobID, session: session.name, response: response("stopped"))
        }
        let shortDeadline = ContinuousClock.now + .milliseconds(300)
        try await scheduler.waitForChange(session: session.name, deadline: shortDeadline)
        try expect(ContinuousClock.now >= shortDeadline, "waitForChange returned before its deadline with nothing changed")
    }

    static func deleteOperation(_ scheduler: any Scheduler) async throws {
        let session = try await scheduler.createBotSession(bot())
        let done = try await scheduler.queue(request())
        let job = try await takeOne(scheduler, session.name, "the job")
        try await scheduler.completeJob(job.jobID, session: session.name, response: response("done"))
        try await scheduler.deleteOperation(done.name)
        try await expectError(.notFound, "operation() of a deleted operation") { _ = try await scheduler.operation(done.name) }
        try await expectError(.notFound, "deleting twice") { try await scheduler.deleteOperation(done.name) }
        let running = try await scheduler.queue(request())
        let runningJob = try await takeOne(scheduler, session.name, "the running job")
        try await scheduler.deleteOperation(running.name)
        try await expectError(.notFound, "operation() of a deleted unfinished operation") { _ = try await scheduler.operation(running.name) }
        let assigned = try await scheduler.assignedJobs(session: session.name)
        try expect(assigned.first { $0.jobID == runningJob.jobID }?.cancelled == true, "deleting the only operation of a running job did not cancel it")
    }

    static func lateCompletion(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request())
        let first = try await scheduler.createBotSession(bot("first"))
        let job = try await takeOne(scheduler, first.name, "the first bot")
        try await scheduler.requeueJob(job.jobID, session: first.name, reason: "cannot run it")
        try expect(try await scheduler.operation(queued.name).stage == .queued, "a job given back is not QUEUED")
        let second = try await scheduler.createBotSession(bot("second"))
        let retry = try await takeOne(scheduler, second.name, "the second bot")
        try expect(retry.jobID == job.jobID, "the second bot did not get the requeued job")
        try await scheduler.completeJob(job.jobID, session: first.name, response: response("late", exitCode: 1))
        let running = try await scheduler.operation(queued.name)
        try expect(running.stage == .executing && running.botID == "second", "a late result from the first bot changed the retry: \(running)")
        let response = response("retry")
        try await scheduler.completeJob(job.jobID, session: second.name, response: response)
        try expect(try await scheduler.operation(queued.name).response == response, "the retry's result was not kept")
    }

    static func closeAndReplaceRequeue(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request())
        let first = try await scheduler.createBotSession(bot("first"))
        _ = try await takeOne(scheduler, first.name, "attempt 1")
        try await scheduler.closeBotSession(first.name, reason: "terminating")
        try expect(try await scheduler.operation(queued.name).stage == .queued, "closing a session did not requeue its job")
        let second = try await scheduler.createBotSession(bot("second"))
        _ = try await takeOne(scheduler, second.name, "attempt 2")
        let replacement = try await scheduler.createBotSession(bot("second"))
        try expect(replacement.name != second.name, "a new session of the same bot has the old one's name")
        try await expectError(.notFound, "renewing a session replaced by a new one of the same bot") {
            _ = try await scheduler.renewBotSession(second.name, status: .ok)
        }
        try expect(try await scheduler.operation(queued.name).stage == .queued, "a new session of the same bot did not requeue the old one's job")
        _ = try await takeOne(scheduler, replacement.name, "attempt 3")
        try await scheduler.closeBotSession(replacement.name, reason: "terminating")
        let aborted = try await scheduler.operation(queued.name)
        try expect(aborted.stage == .completed && statusCode(aborted) == 10,
                   "a job handed out max-job-attempts (3) times is not ABORTED: \(aborted.stage), \(String(describing: aborted.response?.status))")
        // Closed, replaced, closed: each took the executing job back (the last one ABORTED it).
        let takenBack = try await scheduler.statistics().jobsTakenBack
        try expect(takenBack == [.closed: 3], "jobs taken back from closed sessions: \(takenBack), expected session-closed 3")
    }

    static func attemptsExhausted(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request())
        let session = try await scheduler.createBotSession(bot())
        let job = try await takeOne(scheduler, session.name, "attempt 1")
        try await scheduler.requeueJob(job.jobID, session: session.name, reason: "lease failed")
        try expect(try await scheduler.operation(queued.name).stage == .queued, "the first requeue did not queue the job")
        _ = try await takeOne(scheduler, session.name, "attempt 2")
        try await scheduler.requeueJob(job.jobID, session: session.name, reason: "lease failed")
        let aborted = try await scheduler.operation(queued.name)
        try expect(aborted.stage == .completed && statusCode(aborted) == 10 && aborted.response?.status.message.isEmpty == false,
                   "a job given back max-job-attempts (2) times is not ABORTED with a message: \(aborted)")
        try expect(try await take(scheduler, session.name, within: .milliseconds(200)).isEmpty, "an aborted job was assigned again")
    }

    static func sessionExpiry(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request())
        let session = try await scheduler.createBotSession(bot("silent"))
        _ = try await takeOne(scheduler, session.name, "the job")
        try await withMaintenance(scheduler) {
            try await eventually("requeuing the job of a session silent past its keepalive") {
                try await scheduler.operation(queued.name).stage == .queued
            }
            try await eventually("forgetting the expired session") { try await scheduler.statistics().openBotSessions == 0 }
        }
        try await expectError(.notFound, "renewing an expired session") { _ = try await scheduler.renewBotSession(session.name, status: .ok) }
        let takenBack = try await scheduler.statistics().jobsTakenBack
        try expect(takenBack == [.expired: 1], "jobs taken back from closed sessions: \(takenBack), expected session-expired 1")
        // A session kept alive does not expire.
        let alive = try await scheduler.createBotSession(bot("alive"))
        let retry = try await takeOne(scheduler, alive.name, "the requeued job")
        try expect(retry.jobID == queued.jobID, "another bot did not get the requeued job")
        try await withMaintenance(scheduler) {
            // Renewed ten times as often as it expires, so a loaded machine's late wake-ups cannot expire it.
            for _ in 0..<15 {
                try await Task.sleep(for: .milliseconds(200))
                _ = try await scheduler.renewBotSession(alive.name, status: .ok)
            }
        }
        try expect(try await scheduler.operation(queued.name).stage == .executing, "the job of a renewed session was requeued")
    }

    static func executionTimeout(_ scheduler: any Scheduler) async throws {
        let queued = try await scheduler.queue(request(timeout: .seconds(3600)))
        let session = try await scheduler.createBotSession(bot())
        let job = try await takeOne(scheduler, session.name, "the job")
        try await withMaintenance(scheduler) {
            try await eventually("completing a job executing past its timeout (max-execution-timeout 1 s)") {
                try await scheduler.operation(queued.name).stage == .completed
            }
            // Renewed meanwhile, so only the timeout can have ended it.
            _ = try await scheduler.renewBotSession(session.name, status: .ok)
        }
        let timedOut = try await scheduler.operation(queued.name)
        try expect(statusCode(timedOut) == 4, "a job past its timeout is not DEADLINE_EXCEEDED: \(String(describing: timedOut.response?.status))")
        let assigned = try await scheduler.assignedJobs(session: session.name)
        try expect(assigned.first { $0.jobID == job.jobID }?.cancelled == true, "the bot does not see its timed-out job cancelled")
    }

    static func unwatchedCancelled(_ scheduler: any Scheduler) async throws {
        let unwatched = try await scheduler.queue(request())
        let watchedOperation = try await scheduler.queue(request())
        let watched = Collected(try await scheduler.watch(watchedOperation.name))
        try await withMaintenance(scheduler) {
            try await eventually("cancelling an operation nobody watched for 1 s") {
                try await scheduler.operation(unwatched.name).cancelled
            }
            try await Task.sleep(for: .seconds(1.5))
            try expect(try await scheduler.operation(watchedOperation.name).cancelled == false, "an operation with an open watch was cancelled")
            watched.stop()
            try await eventually("cancelling an operation once its watch ended") {
                try await scheduler.operation(watchedOperation.name).cancelled
            }
        }
        try expect(statusCode(try await scheduler.operation(unwatched.name)) == 1, "an unwatched operation is not CANCELLED")
    }

    static func listing(_ scheduler: any Scheduler) async throws {
        let session = try await scheduler.createBotSession(bot(platform: (linux + [PlatformProperty(name: "pool", value: "x")]).sorted()))
        let done = try await scheduler.queue(request(toolName: "bazel"))
        let job = try await takeOne(scheduler, session.name, "the job")
        try await scheduler.completeJob(job.jobID, session: session.name, response: response("done"))
        let pooled = try await scheduler.queue(request(platform: (linux + [PlatformProperty(name: "pool", value: "x")]).sorted(), toolName: "bazel"))
        let plain = try await scheduler.queue(request(toolName: "bgd"))
        _ = try await scheduler.queue(request(instance: "other"))
        let unfinished = try await scheduler.listOperations(OperationQuery(instanceName: "", pageSize: 100))
        try expect(unfinished.operations.map(\.name) == [pooled.name, plain.name]
                    && unfinished.nextPageToken.isEmpty,
                   "the default listing is not the unfinished operations of the instance in queued order: \(unfinished.operations.map(\.name))")
        let sorted = unfinished.operations.map { ($0.queuedAt, $0.name) }
        try expect(zip(sorted, sorted.dropFirst()).allSatisfy { $0 <= $1 }, "the listing is not sorted by (queued time, name)")
        let completed = try await scheduler.listOperations(OperationQuery(
            instanceName: "", predicates: [OperationPredicate(field: .stage, comparison: .equal, value: "COMPLETED")], pageSize: 100))
        try expect(completed.operations.map(\.name) == [done.name], "stage=COMPLETED listed \(completed.operations.map(\.name))")
        let byPlatform = try await scheduler.listOperations(OperationQuery(
            instanceName: "", predicates: [OperationPredicate(field: .platform, comparison: .equal, value: "pool:x")], pageSize: 100))
        try expect(byPlatform.operations.map(\.name) == [pooled.name], "platform=pool:x listed \(byPlatform.operations.map(\.name))")
        let byTool = try await scheduler.listOperations(OperationQuery(
            instanceName: "", predicates: [OperationPredicate(field: .toolName, comparison: .equal, value: "bgd")], pageSize: 100))
        try expect(byTool.operations.map(\.name) == [plain.name], "tool_name=bgd listed \(byTool.operations.map(\.name))")
        let everyStage = try await scheduler.listOperations(OperationQuery(
            instanceName: "", predicates: [OperationPredicate(field: .stage, comparison: .greaterOrEqual, value: "QUEUED"),
                                           OperationPredicate(field: .toolName, comparison: .equal, value: "bazel")], pageSize: 100))
        try expect(Set(everyStage.operations.map(\.name)) == [done.name, pooled.name], "stage>=QUEUED & tool_name=bazel listed \(everyStage.operations.map(\.name))")
        let other = try await scheduler.listOperations(OperationQuery(instanceName: "other", pageSize: 100))
        try expect(other.operations.count == 1 && other.operations[0].instanceName == "other", "instance other's listing is wrong")
        try await expectError(.invalidArgument, "a page size of 0") {
            _ = try await scheduler.listOperations(OperationQuery(instanceName: "", pageSize: 0))
        }
        try await expectError(.invalidArgument, "a page token the server never answered") {
            _ = try await scheduler.listOperations(OperationQuery(instanceName: "", pageSize: 10, pageToken: "not a token"))
        }
    }

    static func paging(_ scheduler: any Scheduler) async throws {
        var expected: [OperationSnapshot] = []
        for _ in 0..<7 { expected.append(try await scheduler.queue(request())) }
        var listed: [OperationSnapshot] = []
        var token: String?
        var pages = 0
        repeat {
            let page = try await scheduler.listOperations(OperationQuery(instanceName: "", pageSize: 3, pageToken: token))
            try expect(page.operations.count <= 3, "a page of size 3 had \(page.operations.count) operations")
            listed += page.operations
            token = page.nextPageToken.isEmpty ? nil : page.nextPageToken
            pages += 1
            // Jobs queued while a client pages come after what it has seen.
            if pages <= 2 { expected.append(try await scheduler.queue(request())) }
        } while token != nil && pages < 20
        let names = listed.map(\.name)
        try expect(Set(names).count == names.count, "paging listed an operation twice: \(names)")
        try expect(Set(names) == Set(expected.map(\.name)), "paging missed operations: listed \(names.count) of \(expected.count)")
        let keys = listed.map { ($0.queuedAt, $0.name) }
        try expect(zip(keys, keys.dropFirst()).allSatisfy { $0 < $1 }, "pages are not in (queued time, name) order")
    }

    static func assignWaitsForDeadline(_ scheduler: any Scheduler) async throws {
        let session = try await scheduler.createBotSession(bot())
        _ = try await scheduler.queue(request(platform: windows))
        let deadline = ContinuousClock.now + .milliseconds(500)
        let jobs = try await scheduler.assignJobs(session: session.name, count: 1, deadline: deadline)
        try expect(jobs.isEmpty, "assignJobs answered a job with none the bot can take")
        try expect(ContinuousClock.now >= deadline, "assignJobs returned empty before its deadline")
    }

    static func assignWakesOnQueue(_ scheduler: any Scheduler) async throws {
        let session = try await scheduler.createBotSession(bot())
        let deadline = ContinuousClock.now + .seconds(60)
        let waiter = Task { try await scheduler.assignJobs(session: session.name, count: 1, deadline: deadline) }
        try await Task.sleep(for: .milliseconds(500))
        // A job it cannot take does not end the wait; one it can does.
        _ = try await scheduler.queue(request(platform: windows))
        let queued = try await scheduler.queue(request())
        let jobs = try await waiter.value
        try expect(jobs.map(\.jobID) == [queued.jobID], "the waiting bot got \(jobs.map(\.jobID)), expected the job queued meanwhile")
        try expect(ContinuousClock.now < deadline - .seconds(20), "assignJobs did not answer when a job was queued meanwhile")
    }

    static func leaseDeliveries(_ scheduler: any Scheduler) async throws {
        _ = try await scheduler.queue(request())
        let session = try await scheduler.createBotSession(bot("first"))
        let job = try await takeOne(scheduler, session.name, "the job")
        try expect(job.delivery == .sent, "a newly assigned job's lease is \(job.delivery), not sent")
        func deliveries(_ session: String) async throws -> [LeaseDelivery] { try await scheduler.assignedJobs(session: session).map(\.delivery) }
        try await scheduler.recordLeaseDeliveries(session: session.name, [job.jobID: .resent, "no-such-job": .reported])
        try expect(try await deliveries(session.name) == [.resent], "a recorded delivery is not kept: \(try await deliveries(session.name))")
        // Another session's record does not touch a job it does not hold.
        let other = try await scheduler.createBotSession(bot("second"))
        try await scheduler.recordLeaseDeliveries(session: other.name, [job.jobID: .reported])
        try expect(try await deliveries(session.name) == [.resent], "another session changed the job's delivery")
        try await scheduler.recordLeaseDeliveries(session: session.name, [job.jobID: .reported])
        try expect(try await deliveries(session.name) == [.reported], "the delivery did not move on to reported")
        // A new assignment starts over.
        try await scheduler.requeueJob(job.jobID, session: session.name, reason: "test")
        let again = try await takeOne(scheduler, other.name, "the requeued job")
        try expect(again.jobID == job.jobID && again.delivery == .sent, "a reassigned job's lease is \(again.delivery), not sent")
        try await expectError(.notFound, "recording for an unknown session") {
            try await scheduler.recordLeaseDeliveries(session: "nonsense/bots/none", [job.jobID: .reported])
        }
    }

    static func statisticsCounts(_ scheduler: any Scheduler) async throws {
        let empty = try await scheduler.statistics()
        try expect(empty.openBotSessions == 0 && empty.queuedByPlatform.values.allSatisfy { $0 == 0 }, "a new scheduler's statistics are not empty: \(empty)")
        _ = try await scheduler.queue(request())
        _ = try await scheduler.queue(request())
        _ = try await scheduler.queue(request(platform: windows))
        let session = try await scheduler.createBotSession(bot())
        _ = try await takeOne(scheduler, session.name, "a linux job")
        let done = try await scheduler.recordCachedResult(request(), result: .init())
        _ = done
        let statistics = try await scheduler.statistics()
        try expect(statistics.openBotSessions == 1, "open sessions: \(statistics.openBotSessions), expected 1")
        try expect(statistics.queuedByPlatform["OSFamily=linux"] == 1 && statistics.queuedByPlatform["OSFamily=windows"] == 1,
                   "queued by platform: \(statistics.queuedByPlatform), expected OSFamily=linux 1, OSFamily=windows 1")
        try expect(statistics.jobsByStage[.queued, default: 0] == 2 && statistics.jobsByStage[.executing, default: 0] == 1
                    && statistics.jobsByStage[.completed, default: 0] == 1,
                   "jobs by stage: \(statistics.jobsByStage), expected 2 queued, 1 executing, 1 completed")
    }

    static func closeEndsLongPolls(_ scheduler: any Scheduler) async throws {
        let session = try await scheduler.createBotSession(bot("replaced"))
        let deadline = ContinuousClock.now + .seconds(60)
        let assigning = Task { try await scheduler.assignJobs(session: session.name, count: 1, deadline: deadline) }
        let waiting = Task { try await scheduler.waitForChange(session: session.name, deadline: deadline) }
        try await Task.sleep(for: .seconds(1))
        _ = try await scheduler.createBotSession(bot("replaced"))
        // Either answer is right (NOT_FOUND, or nothing assigned): what matters is that it comes now.
        let assigned = try? await assigning.value
        try expect(assigned?.isEmpty ?? true, "a replaced session was assigned a job")
        _ = try? await waiting.value
        try expect(ContinuousClock.now < deadline - .seconds(20), "a replaced session's long-polls waited for their deadline")
    }
}
