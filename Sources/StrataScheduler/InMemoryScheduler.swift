import Foundation
import Logging
import StrataAPI
import StrataCore
import StrataProto
import Synchronization

/// The scheduler of one process: jobs, operations and bot sessions in memory, all under one lock.
/// Waiters (bot long-polls, Execute and WaitExecution streams) are woken by the change itself through
/// continuations, never by polling; only `run()` wakes up periodically, for what expires with time.
/// A restart loses everything: a deployment that must survive one uses `SQLScheduler`.
///
/// Bounded: completed jobs and their operations are forgotten `completedJobRetention` after they
/// complete, and each watch stream buffers at most a few snapshots (the newest kept, so the
/// COMPLETED one is never lost).
public final class InMemoryScheduler: Scheduler {
    public let settings: SchedulerSettings
    private let logger: Logger
    private let state = Mutex(State())

    public init(settings: SchedulerSettings, logger: Logger = Logger(label: "strata.scheduler")) {
        self.settings = settings
        self.logger = logger
    }

    // MARK: Execution side

    public func queue(_ request: ExecutionRequest) async throws(StrataError) -> OperationSnapshot {
        try settings.propertySet.validate(request.platform)
        return try mutate { state, effects throws(StrataError) in
            let key = InFlightKey(instanceName: request.instanceName, actionDigest: request.actionDigest)
            if !request.doNotCache, let jobID = state.inFlight[key], var job = state.jobs[jobID] {
                let operation = newOperation(request, jobID: jobID)
                state.operations[operation.name] = operation
                job.operations.append(operation.name)
                let raised = job.stage == .queued && request.priority < job.priority
                if raised {
                    state.queue.remove(job.queueEntry)
                    job.priority = request.priority
                    state.queue.insert(job.queueEntry)
                }
                state.jobs[jobID] = job
                // The other operations' watchers see the job's new priority.
                if raised { publish(jobID, &state, &effects) }
                return snapshot(operation, job)
            }
            if let maxQueueSize = settings.maxQueueSize, state.queue.count >= maxQueueSize {
                throw .resourceExhausted("the execution queue is full (\(maxQueueSize) jobs queued, max-queue-size); retry later")
            }
            let jobID = UUID().uuidString.lowercased()
            let operation = newOperation(request, jobID: jobID)
            state.sequence += 1
            let timeout = min(request.timeout.flatMap { $0 > .zero ? $0 : nil } ?? settings.maxExecutionTimeout, settings.maxExecutionTimeout)
            var job = Job(
                id: jobID, instanceName: request.instanceName, actionDigest: request.actionDigest, action: request.action,
                platform: request.platform, priority: request.priority, doNotCache: request.doNotCache, timeout: timeout,
                queuedAt: Date(), sequence: state.sequence, stage: .queued, operations: [operation.name])
            job.waitingReason = waitingReason(job, state)
            state.jobs[jobID] = job
            state.operations[operation.name] = operation
            if !request.doNotCache { state.inFlight[key] = jobID }
            state.queue.insert(job.queueEntry)
            wakeAssignWaiters(&state, &effects)
            return snapshot(operation, job)
        }
    }

    public func recordCachedResult(
        _ request: ExecutionRequest, result: Build_Bazel_Remote_Execution_V2_ActionResult
    ) async throws(StrataError) -> OperationSnapshot {
        mutate { state, _ in
            let jobID = UUID().uuidString.lowercased()
            let operation = newOperation(request, jobID: jobID)
            state.sequence += 1
            var job = Job(
                id: jobID, instanceName: request.instanceName, actionDigest: request.actionDigest, action: request.action,
                platform: request.platform, priority: request.priority, doNotCache: request.doNotCache,
                timeout: settings.maxExecutionTimeout, queuedAt: Date(), sequence: state.sequence, stage: .completed,
                operations: [operation.name])
            job.response = .with {
                $0.result = result
                $0.cachedResult = true
            }
            job.completedAt = .now
            state.jobs[jobID] = job
            state.operations[operation.name] = operation
            return snapshot(operation, job)
        }
    }

    public func operation(_ name: String) async throws(StrataError) -> OperationSnapshot {
        try mutate { state, _ throws(StrataError) in
            let (operation, job) = try Self.lookUp(name, state)
            return snapshot(operation, job)
        }
    }

    public func watch(_ name: String) async throws(StrataError) -> AsyncThrowingStream<OperationSnapshot, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(
            of: OperationSnapshot.self, throwing: (any Error).self, bufferingPolicy: .bufferingNewest(8))
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        // Set before the stream is registered, so that a consumer gone at any point unregisters it.
        continuation.onTermination = { [weak self] _ in self?.unwatch(name, id: id) }
        try mutate { state, effects throws(StrataError) in
            let (operation, job) = try Self.lookUp(name, state)
            let current = snapshot(operation, job)
            // Yielded under the lock, so that no change can come before the current state.
            continuation.yield(current)
            if current.isDone {
                effects.finished.append(continuation)
            } else {
                state.watchers[name, default: [:]][id] = continuation
            }
        }
        return stream
    }

    public func listOperations(_ query: OperationQuery) async throws(StrataError) -> OperationPage {
        guard query.pageSize > 0 else { throw .invalidArgument("the page size must be positive, not \(query.pageSize)") }
        let after = try query.pageToken.flatMap { token throws(StrataError) in try PageCursor(token: token) }
        return mutate { state, _ in
            let listsCompleted = query.predicates.contains { $0.field == .stage }
            var matching: [OperationSnapshot] = []
            for operation in state.operations.values {
                guard let job = state.jobs[operation.jobID], job.instanceName == query.instanceName else { continue }
                let current = snapshot(operation, job)
                if !listsCompleted && current.isDone { continue }
                if let after, !after.precedes(current) { continue }
                if query.predicates.allSatisfy({ $0.matches(current) }) { matching.append(current) }
            }
            matching.sort { ($0.queuedAt, $0.name) < ($1.queuedAt, $1.name) }
            guard matching.count > query.pageSize else { return OperationPage(operations: matching, nextPageToken: "") }
            let page = Array(matching.prefix(query.pageSize))
            return OperationPage(operations: page, nextPageToken: PageCursor(page[page.count - 1]).token)
        }
    }

    public func cancelOperation(_ name: String) async throws(StrataError) {
        try mutate { state, effects throws(StrataError) in
            _ = try Self.lookUp(name, state)
            cancel(name, &state, &effects)
        }
    }

    public func deleteOperation(_ name: String) async throws(StrataError) {
        try mutate { state, effects throws(StrataError) in
            let (operation, _) = try Self.lookUp(name, state)
            cancel(name, &state, &effects)
            state.operations[name] = nil
            // The job itself stays until pruned: a cancelled job's bot must still see it cancelled.
            state.jobs[operation.jobID]?.operations.removeAll { $0 == name }
        }
    }

    // MARK: Bot side

    public func createBotSession(_ registration: BotRegistration) async throws(StrataError) -> BotSessionRecord {
        mutate { state, effects in
            let botKey = BotKey(instanceName: registration.instanceName, botID: registration.botID)
            if let previous = state.sessionByBot[botKey] {
                close(previous, .closed, reason: "replaced by a new session of bot \(registration.botID)", &state, &effects)
            }
            let uuid = UUID().uuidString.lowercased()
            let name = registration.instanceName.isEmpty ? "bots/\(uuid)" : "\(registration.instanceName)/bots/\(uuid)"
            let session = Session(
                name: name, instanceName: registration.instanceName, botID: registration.botID,
                platform: registration.platform.sorted(), capacity: max(1, registration.capacity), status: registration.status,
                expiresAt: .now + settings.botSessionKeepaliveTimeout,
                expireTime: Date().addingTimeInterval(settings.botSessionKeepaliveTimeout.seconds))
            state.sessions[name] = session
            state.sessionByBot[botKey] = name
            refreshWaitingReasons(instanceName: registration.instanceName, &state, &effects)
            logger.debug("bot session opened", metadata: ["session": "\(name)", "bot": "\(registration.botID)"])
            return session.record
        }
    }

    public func renewBotSession(_ name: String, status: BotStatus) async throws(StrataError) -> BotSessionRecord {
        try mutate { state, effects throws(StrataError) in
            var session = try liveSession(name, &state, &effects)
            session.expiresAt = .now + settings.botSessionKeepaliveTimeout
            session.expireTime = Date().addingTimeInterval(settings.botSessionKeepaliveTimeout.seconds)
            session.status = status
            state.sessions[name] = session
            return session.record
        }
    }

    public func closeBotSession(_ name: String, reason: String) async throws(StrataError) {
        try mutate { state, effects throws(StrataError) in
            _ = try liveSession(name, &state, &effects)
            close(name, .closed, reason: reason, &state, &effects)
        }
    }

    public func assignedJobs(session name: String) async throws(StrataError) -> [AssignedJob] {
        try mutate { state, effects throws(StrataError) in
            let session = try liveSession(name, &state, &effects)
            return session.jobs.compactMap { state.jobs[$0].map(Self.assigned) }
        }
    }

    public func assignJobs(session name: String, count: Int, deadline: ContinuousClock.Instant) async throws(StrataError) -> [AssignedJob] {
        while true {
            let (assigned, generation) = try mutate { state, effects throws(StrataError) in
                (try assign(name, count: count, &state, &effects), state.queueGeneration)
            }
            if !assigned.isEmpty || count <= 0 || ContinuousClock.now >= deadline || Task.isCancelled { return assigned }
            await wait(session: name, until: deadline, for: .queueChanged(since: generation))
        }
    }

    public func recordLeaseDeliveries(session name: String, _ deliveries: [String: LeaseDelivery]) async throws(StrataError) {
        try mutate { state, effects throws(StrataError) in
            let session = try liveSession(name, &state, &effects)
            for (jobID, delivery) in deliveries where session.jobs.contains(jobID) && state.jobs[jobID]?.session == name {
                state.jobs[jobID]?.delivery = delivery
            }
        }
    }

    public func waitForChange(session name: String, deadline: ContinuousClock.Instant) async throws(StrataError) {
        let generation: UInt64? = try mutate { state, effects throws(StrataError) in
            let session = try liveSession(name, &state, &effects)
            // A cancelled job the bot still holds is news for it: answered at once, so that a
            // cancellation between the caller's read of its jobs and this wait is not slept through.
            if session.jobs.contains(where: { state.jobs[$0].map(Self.assigned)?.cancelled == true }) { return nil }
            return session.generation
        }
        guard let generation else { return }
        await wait(session: name, until: deadline, for: .sessionChanged(since: generation))
    }

    public func completeJob(
        _ jobID: String, session name: String, response: Build_Bazel_Remote_Execution_V2_ExecuteResponse
    ) async throws(StrataError) {
        try mutate { state, effects throws(StrataError) in
            var session = try liveSession(name, &state, &effects)
            guard let index = session.jobs.firstIndex(of: jobID) else {
                logger.debug("ignored a result for a job not assigned to the session", metadata: ["job": "\(jobID)", "session": "\(name)"])
                return
            }
            session.jobs.remove(at: index)
            state.sessions[name] = session
            // A job cancelled or timed out meanwhile keeps its final response.
            guard let job = state.jobs[jobID], job.stage == .executing, job.session == name else { return }
            complete(jobID, response: response, &state, &effects)
        }
    }

    public func requeueJob(_ jobID: String, session name: String, reason: String) async throws(StrataError) {
        try mutate { state, effects throws(StrataError) in
            var session = try liveSession(name, &state, &effects)
            guard let index = session.jobs.firstIndex(of: jobID) else { return }
            session.jobs.remove(at: index)
            state.sessions[name] = session
            guard let job = state.jobs[jobID], job.stage == .executing, job.session == name else { return }
            returnToQueue(jobID, reason: "bot \(session.botID) gave it back: \(reason)", &state, &effects)
        }
    }

    public func run() async throws {
        while true {
            try await Task.sleep(for: settings.maintenanceInterval)
            maintain(now: .now)
        }
    }

    public func statistics() async throws(StrataError) -> SchedulerStatistics {
        state.withLock { state in
            var statistics = SchedulerStatistics(openBotSessions: state.sessions.count, jobsTakenBack: state.jobsTakenBack)
            for stage in JobStage.allCases { statistics.jobsByStage[stage] = 0 }
            for job in state.jobs.values { statistics.jobsByStage[job.stage, default: 0] += 1 }
            for entry in state.queue.entries {
                guard let job = state.jobs[entry.jobID] else { continue }
                statistics.queuedByPlatform[PlatformProperty.label(job.platform), default: 0] += 1
            }
            return statistics
        }
    }

    // MARK: Introspection for tests

    /// Long-polls parked on a continuation now (bot sessions waiting for work or a change).
    var parkedWaiterCount: Int { state.withLock { $0.waiters.count } }
    /// Watch streams registered now.
    var openWatchStreamCount: Int { state.withLock { $0.watchers.values.reduce(0) { $0 + $1.count } } }
    /// Jobs and operations held now, completed or not.
    var heldCounts: (jobs: Int, operations: Int) { state.withLock { ($0.jobs.count, $0.operations.count) } }

    // MARK: Periodic work

    /// Everything that changes with time alone; `run()` calls it every `maintenanceInterval`.
    func maintain(now: ContinuousClock.Instant) {
        mutate { state, effects in
            for (name, session) in state.sessions where session.expiresAt <= now {
                close(name, .expired, reason: "expired: no update for \(settings.botSessionKeepaliveTimeout)", &state, &effects)
            }
            for job in state.jobs.values where job.stage == .executing {
                guard let deadline = job.executionDeadline, deadline <= now else { continue }
                let message = "the action ran longer than its timeout of \(job.timeout)"
                complete(job.id, response: .with { $0.status = StrataError(.deadlineExceeded, message).rpcStatus }, &state, &effects)
                logger.info("job timed out", metadata: ["job": "\(job.id)", "action": "\(job.actionDigest)"])
            }
            if let unwatched = settings.unwatchedOperationTimeout {
                for operation in state.operations.values where !operation.cancelled && state.watchers[operation.name] == nil {
                    guard operation.lastWatched + unwatched <= now, state.jobs[operation.jobID]?.stage != .completed else { continue }
                    logger.info("operation cancelled: nobody watched it", metadata: ["operation": "\(operation.name)"])
                    cancel(operation.name, &state, &effects)
                }
            }
            for job in state.jobs.values where job.stage == .completed {
                guard let completedAt = job.completedAt, completedAt + settings.completedJobRetention <= now else { continue }
                for name in job.operations { state.operations[name] = nil }
                state.jobs[job.id] = nil
            }
        }
    }

    // MARK: State

    private struct State {
        var jobs: [String: Job] = [:]
        var operations: [String: Operation] = [:]
        /// The job each cacheable action in flight (queued or executing) is deduplicated into.
        var inFlight: [InFlightKey: String] = [:]
        var queue = JobQueue()
        var sessions: [String: Session] = [:]
        var sessionByBot: [BotKey: String] = [:]
        var waiters: [UInt64: Waiter] = [:]
        /// Open watch streams, by operation name, then by stream id.
        var watchers: [String: [UInt64: AsyncThrowingStream<OperationSnapshot, any Error>.Continuation]] = [:]
        var nextID: UInt64 = 0
        /// Queue order among jobs of the same priority.
        var sequence: UInt64 = 0
        /// Counts every job queued or requeued, so that a bot about to wait knows it missed none.
        var queueGeneration: UInt64 = 0
        /// Executing jobs taken back from closed sessions, by why they closed (`statistics()`).
        var jobsTakenBack: [SessionEnding: Int] = [:]
    }

    private struct Job {
        let id: String
        let instanceName: String
        let actionDigest: Digest
        let action: Build_Bazel_Remote_Execution_V2_Action
        let platform: [PlatformProperty]
        var priority: Int32
        let doNotCache: Bool
        let timeout: Duration
        let queuedAt: Date
        let sequence: UInt64
        var stage: JobStage
        var cancelled = false
        /// How many times it was handed to a bot.
        var attempts = 0
        var session: String?
        var botID: String?
        var assignedAt: Date?
        var delivery = LeaseDelivery.sent
        var executionDeadline: ContinuousClock.Instant?
        var response: Build_Bazel_Remote_Execution_V2_ExecuteResponse?
        var completedAt: ContinuousClock.Instant?
        var waitingReason: String?
        var operations: [String]

        var queueEntry: JobQueue.Entry { JobQueue.Entry(priority: priority, sequence: sequence, jobID: id) }

        init(
            id: String, instanceName: String, actionDigest: Digest, action: Build_Bazel_Remote_Execution_V2_Action,
            platform: [PlatformProperty], priority: Int32, doNotCache: Bool, timeout: Duration, queuedAt: Date,
            sequence: UInt64, stage: JobStage, operations: [String]
        ) {
            self.id = id
            self.instanceName = instanceName
            self.actionDigest = actionDigest
            self.action = action
            self.platform = platform
            self.priority = priority
            self.doNotCache = doNotCache
            self.timeout = timeout
            self.queuedAt = queuedAt
            self.sequence = sequence
            self.stage = stage
            self.operations = operations
        }
    }

    private struct Operation {
        let name: String
        let jobID: String
        let requestMetadata: ClientRequestMetadata
        var cancelled = false
        /// When a watch stream last ended (or the operation was created), for `unwatchedOperationTimeout`.
        var lastWatched: ContinuousClock.Instant
    }

    private struct Session {
        let name: String
        let instanceName: String
        let botID: String
        let platform: [PlatformProperty]
        let capacity: Int
        var status: BotStatus
        var expiresAt: ContinuousClock.Instant
        var expireTime: Date
        /// Jobs assigned and not yet reported back, in assignment order (cancelled ones included).
        var jobs: [String] = []
        /// Counts changes the bot must hear about (a job of it cancelled or timed out).
        var generation: UInt64 = 0

        var record: BotSessionRecord {
            BotSessionRecord(name: name, instanceName: instanceName, botID: botID, platform: platform, capacity: capacity, expireTime: expireTime)
        }
    }

    private struct InFlightKey: Hashable {
        let instanceName: String
        let actionDigest: Digest
    }

    private struct BotKey: Hashable {
        let instanceName: String
        let botID: String
    }

    private enum WaitCondition: Sendable {
        case queueChanged(since: UInt64)
        case sessionChanged(since: UInt64)
    }

    private struct Waiter {
        let session: String
        let condition: WaitCondition
        let continuation: CheckedContinuation<Void, Never>
    }

    /// What a change does once the lock is released: ending a stream calls its termination handler,
    /// which takes the lock again.
    private struct Effects {
        var finished: [AsyncThrowingStream<OperationSnapshot, any Error>.Continuation] = []
        var resumed: [CheckedContinuation<Void, Never>] = []
    }

    private func mutate<T: Sendable>(_ body: (inout State, inout Effects) throws(StrataError) -> T) throws(StrataError) -> T {
        let (result, effects) = state.withLock { state -> (Result<T, StrataError>, Effects) in
            var effects = Effects()
            do throws(StrataError) {
                return (.success(try body(&state, &effects)), effects)
            } catch {
                return (.failure(error), effects)
            }
        }
        for continuation in effects.finished { continuation.finish() }
        for continuation in effects.resumed { continuation.resume() }
        return try result.get()
    }

    private func mutate<T: Sendable>(_ body: (inout State, inout Effects) -> T) -> T {
        let (result, effects) = state.withLock { state -> (T, Effects) in
            var effects = Effects()
            return (body(&state, &effects), effects)
        }
        for continuation in effects.finished { continuation.finish() }
        for continuation in effects.resumed { continuation.resume() }
        return result
    }

    // MARK: Transitions (under the lock)

    private func newOperation(_ request: ExecutionRequest, jobID: String) -> Operation {
        let uuid = UUID().uuidString.lowercased()
        let name = request.instanceName.isEmpty ? "operations/\(uuid)" : "\(request.instanceName)/operations/\(uuid)"
        return Operation(name: name, jobID: jobID, requestMetadata: request.requestMetadata, lastWatched: .now)
    }

    private static func lookUp(_ name: String, _ state: State) throws(StrataError) -> (Operation, Job) {
        guard let operation = state.operations[name], let job = state.jobs[operation.jobID] else {
            throw .notFound("no operation \"\(StrataError.echo(name))\" (unknown, deleted, or completed long ago)")
        }
        return (operation, job)
    }

    /// The session, if open: NOT_FOUND when unknown or closed, and when expired (then closed now).
    private func liveSession(_ name: String, _ state: inout State, _ effects: inout Effects) throws(StrataError) -> Session {
        guard let session = state.sessions[name] else {
            throw .notFound("no bot session \"\(StrataError.echo(name))\" (unknown, closed or expired)")
        }
        guard session.expiresAt > .now else {
            close(name, .expired, reason: "expired: no update for \(settings.botSessionKeepaliveTimeout)", &state, &effects)
            throw .notFound("the bot session \"\(StrataError.echo(name))\" expired (no update for \(settings.botSessionKeepaliveTimeout))")
        }
        return session
    }

    private func snapshot(_ operation: Operation, _ job: Job) -> OperationSnapshot {
        var current = OperationSnapshot(
            name: operation.name, instanceName: job.instanceName, jobID: job.id, actionDigest: job.actionDigest, stage: job.stage,
            cancelled: job.cancelled || operation.cancelled, queuedAt: job.queuedAt, platform: job.platform, priority: job.priority,
            waitingReason: job.stage == .queued ? job.waitingReason : nil, botID: job.botID, response: job.response,
            requestMetadata: operation.requestMetadata)
        if operation.cancelled {
            // Cancelled on its own while its job goes on for other operations.
            current.stage = .completed
            current.waitingReason = nil
            current.response = Self.cancelledResponse
        }
        return current
    }

    private static let cancelledResponse = Build_Bazel_Remote_Execution_V2_ExecuteResponse.with {
        $0.status = StrataError(.cancelled, "the operation was cancelled").rpcStatus
    }

    private static func assigned(_ job: Job) -> AssignedJob {
        AssignedJob(
            jobID: job.id, instanceName: job.instanceName, actionDigest: job.actionDigest, action: job.action,
            doNotCache: job.doNotCache, cancelled: job.cancelled || job.stage == .completed, queuedAt: job.queuedAt,
            assignedAt: job.assignedAt ?? job.queuedAt, delivery: job.delivery)
    }

    /// Sends the job's operations' watchers its current state, ending their streams once it is final.
    private func publish(_ jobID: String, _ state: inout State, _ effects: inout Effects) {
        guard let job = state.jobs[jobID] else { return }
        for name in job.operations { publishOperation(name, &state, &effects) }
    }

    private func publishOperation(_ name: String, _ state: inout State, _ effects: inout Effects) {
        guard let operation = state.operations[name], let job = state.jobs[operation.jobID], let watchers = state.watchers[name] else { return }
        let current = snapshot(operation, job)
        for continuation in watchers.values { continuation.yield(current) }
        if current.isDone {
            state.watchers[name] = nil
            effects.finished.append(contentsOf: watchers.values)
        }
    }

    private func assign(_ name: String, count: Int, _ state: inout State, _ effects: inout Effects) throws(StrataError) -> [AssignedJob] {
        var session = try liveSession(name, &state, &effects)
        guard count > 0 else { return [] }
        var chosen: [Job] = []
        for entry in state.queue.entries {
            guard let job = state.jobs[entry.jobID] else { continue }
            guard job.instanceName == session.instanceName && settings.propertySet.matches(job: job.platform, bot: session.platform) else { continue }
            chosen.append(job)
            if chosen.count == count { break }
        }
        var assigned: [AssignedJob] = []
        for var job in chosen {
            state.queue.remove(job.queueEntry)
            job.stage = .executing
            job.attempts += 1
            job.session = name
            job.botID = session.botID
            job.assignedAt = Date()
            job.delivery = .sent
            job.executionDeadline = .now + job.timeout
            job.waitingReason = nil
            state.jobs[job.id] = job
            session.jobs.append(job.id)
            assigned.append(Self.assigned(job))
            publish(job.id, &state, &effects)
        }
        state.sessions[name] = session
        return assigned
    }

    /// An executing job back to the queue, or ABORTED once it was handed out `maxJobAttempts` times.
    private func returnToQueue(_ jobID: String, reason: String, _ state: inout State, _ effects: inout Effects) {
        guard var job = state.jobs[jobID], job.stage == .executing else { return }
        job.session = nil
        job.botID = nil
        job.assignedAt = nil
        job.executionDeadline = nil
        if job.attempts >= settings.maxJobAttempts {
            state.jobs[jobID] = job
            let message = "the job was handed to a bot \(job.attempts) times without a result (max-job-attempts); the last one: \(reason)"
            logger.warning("job aborted", metadata: ["job": "\(jobID)", "action": "\(job.actionDigest)", "reason": "\(reason)"])
            complete(jobID, response: .with { $0.status = StrataError(.aborted, message).rpcStatus }, &state, &effects)
            return
        }
        job.stage = .queued
        job.waitingReason = waitingReason(job, state)
        state.jobs[jobID] = job
        state.queue.insert(job.queueEntry)
        logger.info("job requeued", metadata: ["job": "\(jobID)", "attempts": "\(job.attempts)", "reason": "\(reason)"])
        wakeAssignWaiters(&state, &effects)
        publish(jobID, &state, &effects)
    }

    private func complete(
        _ jobID: String, response: Build_Bazel_Remote_Execution_V2_ExecuteResponse, _ state: inout State, _ effects: inout Effects
    ) {
        guard var job = state.jobs[jobID], job.stage != .completed else { return }
        job.stage = .completed
        job.response = response
        job.completedAt = .now
        job.executionDeadline = nil
        job.waitingReason = nil
        state.jobs[jobID] = job
        state.queue.remove(job.queueEntry)
        let key = InFlightKey(instanceName: job.instanceName, actionDigest: job.actionDigest)
        if state.inFlight[key] == jobID { state.inFlight[key] = nil }
        // A bot still holding it (cancelled, timed out) hears that it should stop.
        if let session = job.session, state.sessions[session]?.jobs.contains(jobID) == true {
            state.sessions[session]?.generation += 1
            wakeSession(session, &state, &effects)
        }
        publish(jobID, &state, &effects)
    }

    private func cancel(_ name: String, _ state: inout State, _ effects: inout Effects) {
        guard var operation = state.operations[name], let job = state.jobs[operation.jobID] else { return }
        guard !operation.cancelled, job.stage != .completed else { return }
        operation.cancelled = true
        state.operations[name] = operation
        publishOperation(name, &state, &effects)
        guard job.operations.allSatisfy({ state.operations[$0]?.cancelled ?? true }) else { return }
        state.jobs[job.id]?.cancelled = true
        complete(job.id, response: Self.cancelledResponse, &state, &effects)
    }

    private func close(_ name: String, _ ending: SessionEnding, reason: String, _ state: inout State, _ effects: inout Effects) {
        guard let session = state.sessions.removeValue(forKey: name) else { return }
        let botKey = BotKey(instanceName: session.instanceName, botID: session.botID)
        if state.sessionByBot[botKey] == name { state.sessionByBot[botKey] = nil }
        logger.info("bot session closed", metadata: ["session": "\(name)", "bot": "\(session.botID)", "reason": "\(reason)"])
        for jobID in session.jobs where state.jobs[jobID]?.session == name {
            if state.jobs[jobID]?.stage == .executing { state.jobsTakenBack[ending, default: 0] += 1 }
            returnToQueue(jobID, reason: "bot session \(name) closed: \(reason)", &state, &effects)
        }
        wakeSession(name, &state, &effects)
        refreshWaitingReasons(instanceName: session.instanceName, &state, &effects)
    }

    /// Why a queued job waits, or nil when some open session could take it.
    private func waitingReason(_ job: Job, _ state: State) -> String? {
        let open = state.sessions.values.filter { $0.instanceName == job.instanceName }
        return settings.propertySet.waitingReason(job: job.platform, instance: job.instanceName, bots: open.map(\.platform))
    }

    private func refreshWaitingReasons(instanceName: String, _ state: inout State, _ effects: inout Effects) {
        for entry in state.queue.entries {
            let jobID = entry.jobID
            guard let job = state.jobs[jobID], job.instanceName == instanceName else { continue }
            let reason = waitingReason(job, state)
            guard reason != job.waitingReason else { continue }
            state.jobs[jobID]?.waitingReason = reason
            publish(jobID, &state, &effects)
        }
    }

    // MARK: Waiting

    private func wakeAssignWaiters(_ state: inout State, _ effects: inout Effects) {
        state.queueGeneration += 1
        for (id, waiter) in state.waiters {
            guard case .queueChanged = waiter.condition else { continue }
            state.waiters[id] = nil
            effects.resumed.append(waiter.continuation)
        }
    }

    private func wakeSession(_ name: String, _ state: inout State, _ effects: inout Effects) {
        for (id, waiter) in state.waiters where waiter.session == name {
            state.waiters[id] = nil
            effects.resumed.append(waiter.continuation)
        }
    }

    private static func isStale(_ condition: WaitCondition, session: String, _ state: State) -> Bool {
        guard let current = state.sessions[session] else { return true }
        switch condition {
        case .queueChanged(let since): return state.queueGeneration != since
        case .sessionChanged(let since): return current.generation != since
        }
    }

    /// Waits until the condition no longer holds (woken by the change), `deadline`, or cancellation;
    /// the parked continuation is released in every case.
    private func wait(session: String, until deadline: ContinuousClock.Instant, for condition: WaitCondition) async {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            group.addTask { await self.park(id, session: session, condition: condition) }
            await group.next()
            group.cancelAll()
        }
    }

    private func park(_ id: UInt64, session: String, condition: WaitCondition) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let parked = state.withLock { state in
                    // Cancelled before parking: the handler below found nothing to resume.
                    if Task.isCancelled || Self.isStale(condition, session: session, state) { return false }
                    state.waiters[id] = Waiter(session: session, condition: condition, continuation: continuation)
                    return true
                }
                if !parked { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.continuation.resume()
        }
    }

    private func unwatch(_ name: String, id: UInt64) {
        let removed = state.withLock { state -> AsyncThrowingStream<OperationSnapshot, any Error>.Continuation? in
            guard let removed = state.watchers[name]?.removeValue(forKey: id) else { return nil }
            if state.watchers[name]?.isEmpty == true { state.watchers[name] = nil }
            state.operations[name]?.lastWatched = .now
            return removed
        }
        // Released here, outside the lock, whatever releasing a continuation may call.
        _ = removed
    }
}

/// ListOperations' cursor: the (queued time, name) of the last operation of the previous page.
private struct PageCursor {
    let queuedAt: Date
    let name: String

    init(_ operation: OperationSnapshot) {
        queuedAt = operation.queuedAt
        name = operation.name
    }

    init(token: String) throws(StrataError) {
        let parts = token.split(separator: "/", maxSplits: 1).map(String.init)
        guard parts.count == 2, let bits = UInt64(parts[0], radix: 16) else {
            throw .invalidArgument("invalid page token \"\(StrataError.echo(token))\": not one this server answered")
        }
        queuedAt = Date(timeIntervalSinceReferenceDate: Double(bitPattern: bits))
        name = parts[1]
    }

    /// The time's exact bits: a conversion (to seconds since 1970) could round it to another operation's.
    var token: String { String(queuedAt.timeIntervalSinceReferenceDate.bitPattern, radix: 16) + "/" + name }

    /// Whether `operation` comes after this cursor in the listing's order.
    func precedes(_ operation: OperationSnapshot) -> Bool { (queuedAt, name) < (operation.queuedAt, operation.name) }
}

extension Duration {
    fileprivate var seconds: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}
