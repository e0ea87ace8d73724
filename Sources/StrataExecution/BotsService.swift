import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import StrataAPI
import StrataCore
import StrataProto
import StrataScheduler
import StrataServer
import SwiftProtobuf

public typealias BotSession = Google_Devtools_Remoteworkers_V1test2_BotSession
public typealias Lease = Google_Devtools_Remoteworkers_V1test2_Lease

/// The Remote Workers API's Bots service (v1test2) over the scheduler's bot sessions.
///
/// A lease is one job: its id is the job id, its payload the whole `Action` in an `Any` (as BuildGrid
/// 0.9.1 sends it, which buildbox-worker expects), and it is sent ACTIVE at once. Each
/// UpdateBotSession reconciles what the bot reports with the jobs the scheduler assigned it: a
/// COMPLETED lease completes its job (writing the action cache first when it should), a lease the
/// bot dropped or set CANCELLED goes back to the queue (one it was just sent and never reported is
/// sent once more first: see `LeaseDelivery`), a cancelled job's lease is sent CANCELLED until the bot
/// lets it go. Then it long-polls for work while the bot has spare capacity.
public struct BotsService: Google_Devtools_Remoteworkers_V1test2_Bots.SimpleServiceProtocol {
    let registry: InstanceRegistry
    let metrics: ExecutionMetrics?
    let logger: Logger

    /// How long a long-poll waits in the time left (the client's deadline, the session's keepalive):
    /// the answer must reach the bot before either runs out. Four fifths of a long window; of a short
    /// one, all but a second (half of it under two seconds), since a loaded machine can take a few
    /// hundred milliseconds to get the answer out and a fifth of a second is not enough margin.
    static func longPollWait(in window: Duration) -> Duration {
        window - max(window * 0.2, min(window / 2, .seconds(1)))
    }

    public init(registry: InstanceRegistry, metrics: ExecutionMetrics? = nil, logger: Logger = Logger(label: "strata.bots")) {
        self.registry = registry
        self.metrics = metrics
        self.logger = logger
    }

    public func createBotSession(
        request: Google_Devtools_Remoteworkers_V1test2_CreateBotSessionRequest, context: ServerContext
    ) async throws -> BotSession {
        let backend = try registry.service(Instance.Bots.self, of: request.parent)
        let reported = request.botSession
        guard !reported.botID.isEmpty else { throw StrataError.invalidArgument("CreateBotSession needs bot_session.bot_id") }
        let registration = BotRegistration(
            instanceName: request.parent, botID: reported.botID, platform: Self.platform(of: reported.worker),
            capacity: try Self.capacity(of: reported.worker), status: BotStatus(rawValue: reported.status.rawValue) ?? .ok)
        let record = try await backend.scheduler.createBotSession(registration)
        // Work already queued goes out with the session; a bot that wants to wait for more long-polls.
        let assigned = try await backend.scheduler.assignJobs(session: record.name, count: record.capacity, deadline: .now)
        return Self.session(record, reported: reported, jobs: assigned)
    }

    public func updateBotSession(
        request: Google_Devtools_Remoteworkers_V1test2_UpdateBotSessionRequest, context: ServerContext
    ) async throws -> BotSession {
        guard let instanceName = ScopedName.instance(of: request.name, collection: "bots") else {
            throw StrataError.notFound("no bot session named \"\(StrataError.echo(request.name))\": session names are {instance}/bots/{id}")
        }
        let backend = try registry.service(Instance.Bots.self, of: instanceName)
        let scheduler = backend.scheduler
        let reported = request.botSession
        let status = BotStatus(rawValue: reported.status.rawValue) ?? .ok
        let record = try await scheduler.renewBotSession(request.name, status: status)

        // Reconcile the bot's report with the jobs the scheduler holds it responsible for.
        let assigned = try await scheduler.assignedJobs(session: record.name)
        let leases = Dictionary(reported.leases.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        var running: [AssignedJob] = []
        // Leases sent and never reported that the bot leaves out: the answer carrying them may never
        // have reached it (a long-poll cut short on the way back). Sent again, once, at no attempt's
        // cost (see `LeaseDelivery`); the scheduler keeps that state, so any bots process sees it.
        var resending: Set<String> = []
        var deliveries: [String: LeaseDelivery] = [:]
        var unacknowledgedCancel = false
        // A report that changed something (a lease completed or given back) is answered at once, as
        // BuildGrid does: the bot learns its next work without waiting out a poll.
        var reportedChange = false
        for job in assigned {
            guard let lease = leases[job.jobID] else {
                if !job.cancelled && job.delivery == .sent {
                    resending.insert(job.jobID)
                    deliveries[job.jobID] = .resent
                    running.append(job)
                    continue
                }
                // The bot dropped the lease (or lost it twice): give the job to another bot.
                try await requeue(job, record, scheduler, reason: job.cancelled ? "cancelled lease removed" : "lease dropped by the bot")
                reportedChange = true
                continue
            }
            switch lease.state {
            case .completed:
                try await complete(job, lease: lease, session: record, backend: backend)
                reportedChange = true
            case .cancelled:
                try await requeue(job, record, scheduler, reason: job.cancelled ? "cancelled lease acknowledged" : "lease cancelled by the bot")
                reportedChange = true
            default:
                running.append(job)
                if job.delivery != .reported { deliveries[job.jobID] = .reported }
                if job.cancelled { unacknowledgedCancel = true }
            }
        }
        if !deliveries.isEmpty { try await scheduler.recordLeaseDeliveries(session: record.name, deliveries) }

        if status == .botTerminating {
            try await scheduler.closeBotSession(record.name, reason: "the bot is terminating")
            var session = Self.session(record, reported: reported, jobs: [])
            session.status = reported.status
            return session
        }

        // Long-poll: never past the client's deadline or the session's keepalive, and not at all when
        // there is news for the bot already (a job to cancel) or its report changed something; queued
        // work it has room for is handed out either way.
        let spare = record.capacity - running.count
        if unacknowledgedCancel || reportedChange || !resending.isEmpty {
            if spare > 0 { _ = try await scheduler.assignJobs(session: record.name, count: spare, deadline: .now) }
        } else {
            let keepalive = scheduler.settings.botSessionKeepaliveTimeout
            let window = min(RequestDeadline.remaining ?? keepalive, keepalive)
            let deadline = ContinuousClock.now + Self.longPollWait(in: window)
            try await Self.untilAbandoned {
                if spare > 0 {
                    _ = try await scheduler.assignJobs(session: record.name, count: spare, deadline: deadline)
                } else {
                    try await scheduler.waitForChange(session: record.name, deadline: deadline)
                }
            }
        }
        let current = try await scheduler.assignedJobs(session: record.name)
        return Self.session(record, reported: reported, jobs: current)
    }

    /// PostBotEventTemp: a bot's log line (BuildGrid ignores it as well); recorded in the server log.
    public func postBotEventTemp(
        request: Google_Devtools_Remoteworkers_V1test2_PostBotEventTempRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        guard let instanceName = ScopedName.instance(of: request.name, collection: "bots") else {
            throw StrataError.notFound("no bot session named \"\(StrataError.echo(request.name))\"")
        }
        _ = try registry.service(Instance.Bots.self, of: instanceName)
        logger.info("bot session \(StrataError.echo(request.name)): \(request.type): \(StrataError.echo(request.msg))")
        return Google_Protobuf_Empty()
    }

    /// Runs a long-poll's wait, cut short when the bot goes away (gRPC signals it through the RPC's
    /// cancellation handle, not by cancelling the handler) or the server shuts down: neither should
    /// hold the handler for the rest of the poll.
    static func untilAbandoned(_ wait: @escaping @Sendable () async throws -> Void) async throws {
        let waiting = Task { try await wait() }
        do {
            try await withRPCCancellationHandler {
                try await withGracefulShutdownHandler {
                    try await withTaskCancellationHandler {
                        try await waiting.value
                    } onCancel: {
                        waiting.cancel()
                    }
                } onGracefulShutdown: {
                    waiting.cancel()
                }
            } onCancelRPC: {
                waiting.cancel()
            }
        } catch is CancellationError {
            // The poll was cut short: answer with what the session has now.
        } catch let error as StrataError where error.code == .cancelled {
        }
    }

    private func requeue(_ job: AssignedJob, _ session: BotSessionRecord, _ scheduler: any Scheduler, reason: String) async throws {
        try await scheduler.requeueJob(job.jobID, session: session.name, reason: reason)
        if !job.cancelled { metrics?.countRequeue(reason: "bot") }
        logger.debug("bot \(session.botID): job \(job.jobID) given back: \(reason)")
    }

    /// A COMPLETED lease: the action cache first (when the status is OK and the action may be cached;
    /// the cache's own `cache-failed-actions` decides about non-zero exit codes), then the job.
    private func complete(_ job: AssignedJob, lease: Lease, session: BotSessionRecord, backend: ExecutionBackend) async throws {
        var response = Self.executeResponse(lease)
        if response.hasResult || response.status.code == 0 {
            let now = Date()
            var metadata = response.result.executionMetadata
            if metadata.worker.isEmpty { metadata.worker = session.botID }
            if !metadata.hasQueuedTimestamp { metadata.queuedTimestamp = Google_Protobuf_Timestamp(date: job.queuedAt) }
            if !metadata.hasWorkerStartTimestamp { metadata.workerStartTimestamp = Google_Protobuf_Timestamp(date: job.assignedAt) }
            if !metadata.hasWorkerCompletedTimestamp { metadata.workerCompletedTimestamp = Google_Protobuf_Timestamp(date: now) }
            response.result.executionMetadata = metadata
        }
        if response.status.code == 0, !job.doNotCache, !job.cancelled, let cache = backend.actionCache {
            do {
                try ActionCacheService.validate(response.result, function: job.actionDigest.function)
                try await cache.update(job.actionDigest, response.result)
            } catch {
                // The result still goes to the clients waiting; only later cache hits are lost.
                logger.warning("bot \(session.botID): the result of \(job.actionDigest) was not written to the action cache: \(error)")
            }
        }
        try await backend.scheduler.completeJob(job.jobID, session: session.name, response: response)
        metrics?.recordLease(duration: .milliseconds(Int64(Date().timeIntervalSince(job.assignedAt) * 1000)))
    }

    /// The ExecuteResponse a completed lease reports: its `result` is an ActionResult (what
    /// buildbox-worker and BuildGrid 0.9.1 send) or a whole ExecuteResponse; its `status` is the
    /// execution's (not the action's exit code).
    static func executeResponse(_ lease: Lease) -> Build_Bazel_Remote_Execution_V2_ExecuteResponse {
        var response = Build_Bazel_Remote_Execution_V2_ExecuteResponse()
        if lease.hasResult {
            if lease.result.isA(Build_Bazel_Remote_Execution_V2_ExecuteResponse.self),
               let sent = try? Build_Bazel_Remote_Execution_V2_ExecuteResponse(unpackingAny: lease.result) {
                response = sent
            } else if lease.result.isA(Build_Bazel_Remote_Execution_V2_ActionResult.self),
                      let result = try? Build_Bazel_Remote_Execution_V2_ActionResult(unpackingAny: lease.result) {
                response.result = result
            } else {
                response.status = StrataError(
                    .internal, "the bot reported a result of type \(StrataError.echo(lease.result.typeURL)), not an ActionResult").rpcStatus
                return response
            }
        }
        if lease.hasStatus && lease.status.code != 0 {
            response.status = lease.status
        } else if !lease.hasResult {
            response.status = StrataError(.internal, "the bot completed the lease without a result").rpcStatus
        }
        response.cachedResult = false
        return response
    }

    static func session(_ record: BotSessionRecord, reported: BotSession, jobs: [AssignedJob]) -> BotSession {
        var session = BotSession()
        session.name = record.name
        session.botID = record.botID
        session.status = reported.status
        session.version = reported.version
        if reported.hasWorker { session.worker = reported.worker }
        session.expireTime = Google_Protobuf_Timestamp(date: record.expireTime)
        session.leases = jobs.map { job in
            var lease = Lease()
            lease.id = job.jobID
            lease.state = job.cancelled ? .cancelled : .active
            if let payload = try? Google_Protobuf_Any(message: job.action) { lease.payload = payload }
            return lease
        }
        return session
    }

    /// Every property the bot offers: its worker's and each device's, sorted.
    static func platform(of worker: Google_Devtools_Remoteworkers_V1test2_Worker) -> [PlatformProperty] {
        let properties = worker.properties.map { PlatformProperty(name: $0.key, value: $0.value) }
            + worker.devices.flatMap { $0.properties.map { PlatformProperty(name: $0.key, value: $0.value) } }
        return Array(Set(properties)).sorted()
    }

    /// `worker.configs` `capacity` (BuildGrid's key): how many leases the bot runs at once, 1 by default.
    static func capacity(of worker: Google_Devtools_Remoteworkers_V1test2_Worker) throws(StrataError) -> Int {
        guard let config = worker.configs.last(where: { $0.key == "capacity" }) else { return 1 }
        guard let capacity = Int(config.value), capacity >= 1 else {
            throw .invalidArgument("worker config capacity \"\(StrataError.echo(config.value))\" is not a positive integer")
        }
        return capacity
    }
}
