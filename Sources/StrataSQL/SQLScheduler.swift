import Foundation
import Logging
import PostgresNIO
import StrataAPI
import StrataCore
import StrataProto
import StrataScheduler
import SwiftProtobuf
import Synchronization

/// The `Scheduler` on PostgreSQL (`!sql-scheduler`): jobs, operations and bot sessions are rows of
/// Strata's own tables (migrations 6 and 7 of `SQLMigrations`, created by `strata migrate` or before the first
/// use, like the storage tables), so several processes (an execution process and a bots process) share
/// them and any of them can restart without losing a queued job.
///
/// - Assignment takes queued jobs by (priority, queued time) with `FOR UPDATE SKIP LOCKED` in a
///   transaction that also holds the session's row: two sessions never get one job, and a session being
///   closed never gets a job after its jobs were requeued. The database filters on the job's matched
///   properties (`required_properties <@` the bot's offer, an index-friendly containment that never
///   scans jobs the bot cannot run, so a bot is not starved behind a long queue of others' jobs);
///   `PropertySet.matches` confirms each candidate, the one evaluation shared with every scheduler.
/// - Identical in-flight actions join one job across processes through the unique partial index
///   `strata_jobs_in_flight`: a concurrent insert of the same action conflicts and joins the winner.
/// - Every change someone waits for sends a NOTIFY on the scheduler's channel, in the transaction
///   (delivered at commit): "job:{id}" (an operation's watchers), "op:{name}" (one operation cancelled
///   or deleted), "queue" (a job queued or requeued: bots waiting in `assignJobs`) and
///   "session:{name}" (a job of that session cancelled). One LISTEN connection per scheduler fans them
///   out to local waiters; waiters also re-read the database every `pollInterval`, so a lost
///   notification (the LISTEN connection down) only delays.
/// - `run()` expires sessions, times out executions, cancels unwatched operations and prunes completed
///   jobs, each with `SKIP LOCKED` row claims, so several processes may run it at once.
/// - An unreachable database answers UNAVAILABLE (`SQLConnection`'s bounds).
public final class SQLScheduler: Scheduler {
    public let settings: SchedulerSettings
    let connection: SQLConnection
    let logger: Logger
    let signals = SQLSchedulerSignals()
    /// The operations with a watch stream open in this process, counted: `run()` refreshes their
    /// `last_watched` before it looks for unwatched operations, so a busy process never cancels what it
    /// is itself watching; other processes see the streams' own refreshes.
    private let watching = Mutex<[String: Int]>([:])
    /// Executing jobs this process took back from sessions it closed, by why (`statistics()`).
    private let jobsTakenBack = Mutex<[SessionEnding: Int]>([:])
    private let listener = SQLSchedulerListener()
    /// The NOTIFY channel, one per schema so that deployments sharing a database do not wake each other.
    let channel: String

    /// How often waiters re-read the database even without a notification (a test sets it long, to
    /// prove that notifications alone wake them).
    let pollInterval: Duration
    /// The most jobs `assignJobs` considers in one statement.
    static let candidateBatch = 64

    public convenience init(connection: SQLConnection, settings: SchedulerSettings, logger: Logger) {
        self.init(connection: connection, settings: settings, logger: logger, pollInterval: .seconds(1))
    }

    init(connection: SQLConnection, settings: SchedulerSettings, logger: Logger, pollInterval: Duration) {
        self.pollInterval = pollInterval
        self.connection = connection
        self.settings = settings
        self.logger = logger
        self.channel = Self.channelName(schema: connection.settings.schema)
    }

    deinit {
        listener.stop()
    }

    static func channelName(schema: String?) -> String {
        let name = "strata_scheduler:\(schema ?? "public")"
        guard name.utf8.count > 63 else { return name }
        // PostgreSQL truncates identifiers to 63 bytes: a long schema name is hashed instead (FNV-1a).
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return "strata_scheduler:" + String(hash, radix: 16)
    }

    // MARK: Database access

    /// Runs `body` in a transaction; notifications it lists are sent in it (at commit) and also fired
    /// locally after the commit, so this process's waiters need not wait for the round trip.
    private func transaction<Result: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection, Logger, Notifications) async throws -> Result
    ) async throws(StrataError) -> Result {
        let notifications = Notifications()
        let logger = self.logger
        let channel = self.channel
        do {
            try await connection.ensureMigrated()
            let result = try await connection.withConnection(what) { postgres in
                try await postgres.withTransaction(logger: logger) { postgres in
                    let result = try await body(postgres, logger, notifications)
                    for key in notifications.keys {
                        try await postgres.query("SELECT pg_notify(\(channel), \(key))", logger: logger).consume()
                    }
                    return result
                }
            }
            for key in notifications.keys { signals.fire(key) }
            return result
        } catch {
            throw Self.mapped(error, what: what, connection: connection)
        }
    }

    static func mapped(_ error: any Error, what: String, connection: SQLConnection) -> StrataError {
        if let error = error as? StrataError { return error }
        if let error = error as? PostgresTransactionError,
           let inner = error.closureError ?? error.beginError ?? error.commitError {
            return mapped(inner, what: what, connection: connection)
        }
        return SQLConnection.strataError(error, what: what, settings: connection.settings, leased: LeaseState())
    }

    /// The keys a transaction notifies.
    final class Notifications: Sendable {
        private let state = Mutex<[String]>([])
        func add(_ key: String) { state.withLock { if !$0.contains(key) { $0.append(key) } } }
        var keys: [String] { state.withLock { $0 } }
    }

    /// Whether this process's LISTEN connection is up (for tests).
    var isListening: Bool { listener.isListening }

    func ensureListening() {
        listener.start(connection: connection, channel: channel, signals: signals, logger: logger)
    }

    /// Waits for one of `keys` or the next poll, whichever is first, but not past `deadline`.
    private func pause(_ waiter: SQLSchedulerSignals.Waiter, deadline: ContinuousClock.Instant) async {
        let poll = ContinuousClock.now.advanced(by: pollInterval)
        await waiter.wait(until: min(deadline, poll))
    }

    // MARK: Execution side

    public func queue(_ request: ExecutionRequest) async throws(StrataError) -> OperationSnapshot {
        try settings.propertySet.validate(request.platform)
        let row = try JobInsert(request: request, settings: settings)
        let maxQueueSize = settings.maxQueueSize
        // A concurrent insert of the same action may win the in-flight index between our look-up and our
        // insert: then the next round joins it. Three rounds cover any interleaving but a pathological one.
        for _ in 0..<3 {
            let name = Self.operationName(instance: request.instanceName)
            let joined: String? = try await transaction("queueing action \(request.actionDigest)") { postgres, logger, notify in
                var jobID: String?
                if !request.doNotCache {
                    let rows = try await postgres.query(
                        """
                        SELECT id FROM strata_jobs
                        WHERE instance_name = \(row.instanceName) AND digest_function = \(row.digestFunction)
                          AND action_hash = \(row.hash) AND action_size = \(row.size) AND stage < 4 AND NOT do_not_cache
                        FOR UPDATE
                        """, logger: logger)
                    for try await id in rows.decode(String.self) { jobID = id }
                    if let jobID {
                        try await postgres.query(
                            "UPDATE strata_jobs SET priority = least(priority, \(row.priority)) WHERE id = \(jobID) AND stage = 2",
                            logger: logger
                        ).consume()
                    }
                }
                if jobID == nil {
                    if let maxQueueSize {
                        // Queueing transactions of every process take turns from the count to the
                        // insert, so the limit is exact across processes, not only within one.
                        try await postgres.query("SELECT pg_advisory_xact_lock(hashtext('strata-queue-size'))", logger: logger).consume()
                        var queued = 0
                        for try await count in try await postgres.query("SELECT count(*) FROM strata_jobs WHERE stage = 2", logger: logger)
                            .decode(Int64.self) { queued = Int(count) }
                        if queued >= maxQueueSize {
                            throw StrataError.resourceExhausted(
                                "the execution queue is full (\(queued) actions queued, max-queue-size \(maxQueueSize)); retry later")
                        }
                    }
                    let id = UUID().uuidString.lowercased()
                    var inserted = false
                    for try await _ in try await postgres.query(
                        """
                        INSERT INTO strata_jobs (id, instance_name, digest_function, action_hash, action_size, action, platform,
                            required_properties, priority, do_not_cache, timeout_ms, stage)
                        VALUES (\(id), \(row.instanceName), \(row.digestFunction), \(row.hash), \(row.size), \(row.action),
                            \(row.platform), \(row.requiredProperties), \(row.priority), \(row.doNotCache), \(row.timeoutMilliseconds), 2)
                        ON CONFLICT (instance_name, digest_function, action_hash, action_size) WHERE stage < 4 AND NOT do_not_cache
                        DO NOTHING RETURNING id
                        """, logger: logger
                    ).decode(String.self) { inserted = true }
                    guard inserted else { return nil }
                    jobID = id
                    notify.add("queue")
                }
                guard let jobID else { return nil }
                try await postgres.query(
                    """
                    INSERT INTO strata_operations (name, job_id, instance_name, request_metadata)
                    VALUES (\(name), \(jobID), \(row.instanceName), \(row.requestMetadata))
                    """, logger: logger
                ).consume()
                return jobID
            }
            if joined != nil { return try await operation(name) }
        }
        throw StrataError.unavailable("queueing action \(request.actionDigest): it kept being queued and completed concurrently; retry")
    }

    public func recordCachedResult(
        _ request: ExecutionRequest, result: Build_Bazel_Remote_Execution_V2_ActionResult
    ) async throws(StrataError) -> OperationSnapshot {
        let row = try JobInsert(request: request, settings: settings)
        let name = Self.operationName(instance: request.instanceName)
        let response = Build_Bazel_Remote_Execution_V2_ExecuteResponse.with {
            $0.result = result
            $0.cachedResult = true
        }
        let responseBytes = try Self.serialized(response)
        try await transaction("recording the cached result of \(request.actionDigest)") { postgres, logger, _ in
            let id = UUID().uuidString.lowercased()
            try await postgres.query(
                """
                INSERT INTO strata_jobs (id, instance_name, digest_function, action_hash, action_size, action, platform,
                    required_properties, priority, do_not_cache, timeout_ms, stage, response, completed_at)
                VALUES (\(id), \(row.instanceName), \(row.digestFunction), \(row.hash), \(row.size), \(row.action),
                    \(row.platform), \(row.requiredProperties), \(row.priority), \(row.doNotCache), \(row.timeoutMilliseconds), 4,
                    \(responseBytes), now())
                """, logger: logger
            ).consume()
            try await postgres.query(
                """
                INSERT INTO strata_operations (name, job_id, instance_name, request_metadata)
                VALUES (\(name), \(id), \(row.instanceName), \(row.requestMetadata))
                """, logger: logger
            ).consume()
        }
        return try await operation(name)
    }

    public func operation(_ name: String) async throws(StrataError) -> OperationSnapshot {
        let snapshots = try await transaction("reading operation \(StrataError.echo(name))") { postgres, logger, _ in
            try await Self.snapshots(postgres, logger, where: "o.name = $1", [name])
        }
        guard let snapshot = snapshots.first?.snapshot else { throw Self.unknownOperation(name) }
        return try await withWaitingReasons([snapshot])[0]
    }

    public func watch(_ name: String) async throws(StrataError) -> AsyncThrowingStream<OperationSnapshot, any Error> {
        ensureListening()
        let first = try await operation(name)
        try await markWatched(name)
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: OperationSnapshot.self)
        continuation.yield(first)
        if first.isDone {
            continuation.finish()
            return stream
        }
        let refreshEvery: Duration = settings.unwatchedOperationTimeout.map { min($0 / 4, .seconds(30)) } ?? .seconds(30)
        watching.withLock { $0[name, default: 0] += 1 }
        let task = Task {
            defer {
                watching.withLock { watching in
                    watching[name, default: 1] -= 1
                    if watching[name] == 0 { watching[name] = nil }
                }
            }
            var last = first
            var lastRefresh = ContinuousClock.now
            do {
                while !Task.isCancelled {
                    let waiter = signals.register(["job:\(first.jobID)", "op:\(name)"])
                    defer { signals.remove(waiter) }
                    let current = try await operation(name)
                    if current != last {
                        continuation.yield(current)
                        last = current
                    }
                    if current.isDone { break }
                    if ContinuousClock.now - lastRefresh >= refreshEvery {
                        try await markWatched(name)
                        lastRefresh = .now
                    }
                    await pause(waiter, deadline: .now.advanced(by: refreshEvery))
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// Records that a client watches the operation now (`unwatchedOperationTimeout`).
    private func markWatched(_ name: String) async throws(StrataError) {
        try await transaction("recording a watcher of \(StrataError.echo(name))") { postgres, logger, _ in
            try await postgres.query("UPDATE strata_operations SET last_watched = now() WHERE name = \(name)", logger: logger).consume()
        }
    }

    public func listOperations(_ query: OperationQuery) async throws(StrataError) -> OperationPage {
        guard query.pageSize >= 1 else { throw StrataError.invalidArgument("page size \(query.pageSize) is below 1") }
        let pageSize = query.pageSize
        var cursor: (micros: Int64, name: String)?
        if let token = query.pageToken, !token.isEmpty {
            let parts = token.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2, let micros = Int64(parts[0]) else {
                throw StrataError.invalidArgument("invalid page token \"\(StrataError.echo(token))\"")
            }
            cursor = (micros, parts[1])
        }
        let listsFinished = query.predicates.contains { $0.field == .stage }
        // Predicates are evaluated in Swift (OperationPredicate.matches, shared by every scheduler), on
        // batches read in listing order from the cursor, until one match past the page says there is more.
        var matched: [(snapshot: OperationSnapshot, micros: Int64)] = []
        var exhausted = false
        while matched.count <= pageSize, !exhausted {
            let after = cursor
            let batch = 256
            let rows = try await transaction("listing operations") { postgres, logger, _ in
                try await Self.snapshots(
                    postgres, logger,
                    where: """
                        o.instance_name = $1 AND (\(Self.queuedMicros), o.name) > ($2::int8, $3::text)
                        ORDER BY \(Self.queuedMicros), o.name LIMIT \(batch)
                        """,
                    [query.instanceName, after?.micros ?? Int64.min, after?.name ?? ""])
            }
            exhausted = rows.count < batch
            for (snapshot, micros) in rows {
                cursor = (micros, snapshot.name)
                guard (listsFinished || !snapshot.isDone) && query.predicates.allSatisfy({ $0.matches(snapshot) }) else { continue }
                matched.append((snapshot, micros))
                if matched.count > pageSize { break }
            }
        }
        let page = Array(matched.prefix(pageSize))
        let token = matched.count > pageSize ? page.last.map { "\($0.micros)/\($0.snapshot.name)" } ?? "" : ""
        return OperationPage(operations: try await withWaitingReasons(page.map(\.snapshot)), nextPageToken: token)
    }

    public func cancelOperation(_ name: String) async throws(StrataError) {
        try await transaction("cancelling operation \(StrataError.echo(name))") { postgres, logger, notify in
            try await Self.cancel(name, postgres, logger, notify)
        }
    }

    public func deleteOperation(_ name: String) async throws(StrataError) {
        try await transaction("deleting operation \(StrataError.echo(name))") { postgres, logger, notify in
            try await Self.cancel(name, postgres, logger, notify)
            try await postgres.query("DELETE FROM strata_operations WHERE name = \(name)", logger: logger).consume()
            notify.add("op:\(name)")
        }
    }

    /// Cancels one operation, and its job when no operation of the job is left uncancelled. NOT_FOUND
    /// when unknown; nothing when already completed or cancelled.
    static func cancel(_ name: String, _ postgres: PostgresConnection, _ logger: Logger, _ notify: Notifications) async throws {
        var found: (jobID: String, cancelled: Bool, stage: Int32, session: String?, leased: Bool)?
        // The job's row first: cancels of its operations serialize on it, so exactly one sees the last.
        for try await row in try await postgres.query(
            """
            SELECT j.id, o.cancelled, j.stage, j.session_name, j.leased FROM strata_operations o
            JOIN strata_jobs j ON j.id = o.job_id WHERE o.name = \(name) FOR UPDATE OF j
            """, logger: logger
        ).decode((String, Bool, Int32, String?, Bool).self) { found = row }
        guard let found else { throw unknownOperation(name) }
        guard found.stage != 4, !found.cancelled else { return }
        try await postgres.query("UPDATE strata_operations SET cancelled = true WHERE name = \(name)", logger: logger).consume()
        notify.add("op:\(name)")
        var remaining: Int64 = 0
        for try await count in try await postgres.query(
            "SELECT count(*) FROM strata_operations WHERE job_id = \(found.jobID) AND NOT cancelled", logger: logger
        ).decode(Int64.self) { remaining = count }
        guard remaining == 0 else { return }
        let response = try serialized(Build_Bazel_Remote_Execution_V2_ExecuteResponse.with {
            $0.status = StrataError(.cancelled, "the operation was cancelled").rpcStatus
        })
        try await postgres.query(
            """
            UPDATE strata_jobs SET stage = 4, cancelled = true, response = \(response), completed_at = now()
            WHERE id = \(found.jobID)
            """, logger: logger
        ).consume()
        notify.add("job:\(found.jobID)")
        if found.leased, let session = found.session { notify.add("session:\(session)") }
    }

    // MARK: Bot side

    public func createBotSession(_ registration: BotRegistration) async throws(StrataError) -> BotSessionRecord {
        let name = Self.botSessionName(instance: registration.instanceName)
        let platform = try Self.serialized(PlatformProperty.platform(registration.platform))
        let offered = registration.platform.map(Self.propertyKey)
        let capacity = Int32(clamping: max(1, registration.capacity))
        let keepalive = settings.botSessionKeepaliveTimeout.milliseconds
        let maxAttempts = settings.maxJobAttempts
        let (expireTime, takenBack) = try await transaction("opening a session for bot \(StrataError.echo(registration.botID))") {
            postgres, logger, notify in
            var takenBack = 0
            // Two sessions of one bot opening at once serialize here, so exactly one stays open.
            let lock = "strata-bot:\(registration.instanceName)/\(registration.botID)"
            try await postgres.query("SELECT pg_advisory_xact_lock(hashtext(\(lock)))", logger: logger).consume()
            var previous: [String] = []
            for try await old in try await postgres.query(
                """
                SELECT name FROM strata_bot_sessions WHERE instance_name = \(registration.instanceName)
                  AND bot_id = \(registration.botID) FOR UPDATE
                """, logger: logger
            ).decode(String.self) { previous.append(old) }
            for old in previous {
                takenBack += try await Self.releaseJobs(
                    of: old, reason: "bot \(registration.botID) opened a new session", maxAttempts: maxAttempts, postgres, logger, notify)
                try await postgres.query("DELETE FROM strata_bot_sessions WHERE name = \(old)", logger: logger).consume()
            }
            var expireAt = Date()
            for try await date in try await postgres.query(
                """
                INSERT INTO strata_bot_sessions (name, instance_name, bot_id, platform, offered_properties, capacity, status, expire_at)
                VALUES (\(name), \(registration.instanceName), \(registration.botID), \(platform), \(offered), \(capacity),
                    \(Int32(registration.status.rawValue)), now() + \(keepalive) * interval '1 millisecond')
                RETURNING expire_at
                """, logger: logger
            ).decode(Date.self) { expireAt = date }
            return (expireAt, takenBack)
        }
        count(takenBack, .closed)
        return BotSessionRecord(
            name: name, instanceName: registration.instanceName, botID: registration.botID, platform: registration.platform,
            capacity: Int(capacity), expireTime: expireTime)
    }

    public func renewBotSession(_ name: String, status: BotStatus) async throws(StrataError) -> BotSessionRecord {
        let keepalive = settings.botSessionKeepaliveTimeout.milliseconds
        let record = try await transaction("renewing bot session \(StrataError.echo(name))") { postgres, logger, _ in
            var record: BotSessionRecord?
            for try await (instance, botID, platform, capacity, expireAt) in try await postgres.query(
                """
                UPDATE strata_bot_sessions SET expire_at = now() + \(keepalive) * interval '1 millisecond', status = \(Int32(status.rawValue))
                WHERE name = \(name) AND expire_at > now()
                RETURNING instance_name, bot_id, platform, capacity, expire_at
                """, logger: logger
            ).decode((String, String, Data, Int32, Date).self) {
                record = BotSessionRecord(
                    name: name, instanceName: instance, botID: botID, platform: try Self.platform(platform),
                    capacity: Int(capacity), expireTime: expireAt)
            }
            return record
        }
        guard let record else { throw Self.unknownSession(name) }
        return record
    }

    public func closeBotSession(_ name: String, reason: String) async throws(StrataError) {
        let maxAttempts = settings.maxJobAttempts
        let takenBack = try await transaction("closing bot session \(StrataError.echo(name))") { postgres, logger, notify in
            var open = false
            for try await _ in try await postgres.query(
                "SELECT name FROM strata_bot_sessions WHERE name = \(name) FOR UPDATE", logger: logger
            ).decode(String.self) { open = true }
            guard open else { throw Self.unknownSession(name) }
            let takenBack = try await Self.releaseJobs(of: name, reason: reason, maxAttempts: maxAttempts, postgres, logger, notify)
            try await postgres.query("DELETE FROM strata_bot_sessions WHERE name = \(name)", logger: logger).consume()
            return takenBack
        }
        count(takenBack, .closed)
    }

    /// Adds jobs taken back from sessions this process closed, once their transaction committed.
    private func count(_ jobs: Int, _ ending: SessionEnding) {
        if jobs > 0 { jobsTakenBack.withLock { $0[ending, default: 0] += jobs } }
    }

    public func assignedJobs(session: String) async throws(StrataError) -> [AssignedJob] {
        try await transaction("reading the jobs of bot session \(StrataError.echo(session))") { postgres, logger, _ in
            guard try await Self.openSession(session, lock: false, postgres, logger) != nil else { throw Self.unknownSession(session) }
            return try await Self.assigned(
                postgres, logger, where: "session_name = $1 AND leased ORDER BY assigned_at, id", [session])
        }
    }

    public func assignJobs(session: String, count: Int, deadline: ContinuousClock.Instant) async throws(StrataError) -> [AssignedJob] {
        guard count > 0 else {
            _ = try await assignedJobs(session: session)
            return []
        }
        ensureListening()
        while true {
            let waiter = signals.register(["queue", "session:\(session)"])
            defer { signals.remove(waiter) }
            let assigned = try await assignQueued(session: session, count: count)
            if !assigned.isEmpty || ContinuousClock.now >= deadline || Task.isCancelled { return assigned }
            await pause(waiter, deadline: deadline)
            // A caller that gave up (the bot's RPC cancelled) takes no job it could not hand on.
            if Task.isCancelled { return [] }
        }
    }

    /// One attempt of `assignJobs`: up to `count` queued jobs the session's bot can run.
    private func assignQueued(session: String, count: Int) async throws(StrataError) -> [AssignedJob] {
        let propertySet = settings.propertySet
        let batch = min(max(count, 1) * 4, Self.candidateBatch)
        return try await transaction("assigning jobs to bot session \(StrataError.echo(session))") { postgres, logger, notify in
            // The session's row, shared: closing it (which takes it exclusively) waits for this assignment
            // and then requeues what it got, rather than missing it.
            guard let open = try await Self.openSession(session, lock: true, postgres, logger) else { throw Self.unknownSession(session) }
            var chosen: [String] = []
            for try await (id, platform) in try await postgres.query(
                """
                SELECT id, platform FROM strata_jobs
                WHERE stage = 2 AND instance_name = \(open.instanceName) AND required_properties <@ \(open.offered)
                ORDER BY priority, queued_at, id LIMIT \(batch) FOR UPDATE SKIP LOCKED
                """, logger: logger
            ).decode((String, Data).self) {
                guard chosen.count < count else { continue }
                if propertySet.matches(job: try Self.platform(platform), bot: open.platform) { chosen.append(id) }
            }
            guard !chosen.isEmpty else { return [] }
            let assigned = try await Self.assigned(
                postgres, logger,
                update: """
                    UPDATE strata_jobs SET stage = 3, session_name = $2, bot_id = $3, assigned_at = now(), leased = true,
                        attempts = attempts + 1, lease_delivery = \(LeaseDelivery.sent.rawValue)
                    WHERE id = ANY($1::text[])
                    """,
                [chosen, session, open.botID])
            for job in assigned { notify.add("job:\(job.jobID)") }
            return assigned.sorted { ($0.queuedAt, $0.jobID) < ($1.queuedAt, $1.jobID) }
        }
    }

    public func recordLeaseDeliveries(session: String, _ deliveries: [String: LeaseDelivery]) async throws(StrataError) {
        guard !deliveries.isEmpty else { return }
        let byDelivery = Dictionary(grouping: deliveries, by: \.value).mapValues { $0.map(\.key) }
        try await transaction("recording the leases of bot session \(StrataError.echo(session))") { postgres, logger, _ in
            guard try await Self.openSession(session, lock: false, postgres, logger) != nil else { throw Self.unknownSession(session) }
            for (delivery, jobIDs) in byDelivery {
                try await postgres.query(
                    """
                    UPDATE strata_jobs SET lease_delivery = \(Int32(delivery.rawValue))
                    WHERE id = ANY(\(jobIDs)) AND session_name = \(session) AND leased
                    """, logger: logger
                ).consume()
            }
        }
    }

    public func waitForChange(session: String, deadline: ContinuousClock.Instant) async throws(StrataError) {
        ensureListening()
        // A change is the session's leases (which jobs, which cancelled) differing from the first read: a
        // notification only says when to look again, since one sent for an earlier change may arrive late.
        var first: [String: Bool]?
        while ContinuousClock.now < deadline, !Task.isCancelled {
            let waiter = signals.register(["session:\(session)"])
            defer { signals.remove(waiter) }
            let jobs = try await assignedJobs(session: session)
            let leases = Dictionary(jobs.map { ($0.jobID, $0.cancelled) }, uniquingKeysWith: { $1 })
            if let first, first != leases { return }
            // A cancelled job the bot still holds is news for it: answered at once (see the protocol).
            if first == nil, leases.values.contains(true) { return }
            if first == nil { first = leases }
            await pause(waiter, deadline: deadline)
        }
    }

    public func completeJob(_ jobID: String, session: String, response: Build_Bazel_Remote_Execution_V2_ExecuteResponse) async throws(StrataError) {
        let bytes = try Self.serialized(response)
        try await transaction("completing job \(StrataError.echo(jobID))") { postgres, logger, notify in
            guard try await Self.openSession(session, lock: false, postgres, logger) != nil else { throw Self.unknownSession(session) }
            guard let stage = try await Self.leasedStage(jobID, session: session, postgres, logger) else { return }
            if stage == 3 {
                try await postgres.query(
                    """
                    UPDATE strata_jobs SET stage = 4, response = \(bytes), completed_at = now(), leased = false
                    WHERE id = \(jobID)
                    """, logger: logger
                ).consume()
                notify.add("job:\(jobID)")
            } else {
                // Cancelled or timed out while it ran: its response is final already; the lease is gone.
                try await postgres.query("UPDATE strata_jobs SET leased = false WHERE id = \(jobID)", logger: logger).consume()
            }
            notify.add("session:\(session)")
        }
    }

    public func requeueJob(_ jobID: String, session: String, reason: String) async throws(StrataError) {
        let maxAttempts = settings.maxJobAttempts
        try await transaction("requeueing job \(StrataError.echo(jobID))") { postgres, logger, notify in
            guard try await Self.openSession(session, lock: false, postgres, logger) != nil else { throw Self.unknownSession(session) }
            guard try await Self.leasedStage(jobID, session: session, postgres, logger) != nil else { return }
            try await Self.release(jobID, reason: reason, maxAttempts: maxAttempts, postgres, logger, notify)
            notify.add("session:\(session)")
        }
    }

    /// The stage of `jobID` (locked) when it is leased to `session`; nil otherwise.
    static func leasedStage(_ jobID: String, session: String, _ postgres: PostgresConnection, _ logger: Logger) async throws -> Int32? {
        var stage: Int32?
        for try await value in try await postgres.query(
            "SELECT stage FROM strata_jobs WHERE id = \(jobID) AND session_name = \(session) AND leased FOR UPDATE", logger: logger
        ).decode(Int32.self) { stage = value }
        return stage
    }

    /// Gives back every job leased to `session` (see `release`); answers how many were executing.
    static func releaseJobs(
        of session: String, reason: String, maxAttempts: Int, _ postgres: PostgresConnection, _ logger: Logger, _ notify: Notifications
    ) async throws -> Int {
        // Its long-polls (assignJobs, waitForChange) end at once: the session is going away.
        notify.add("session:\(session)")
        var jobs: [String] = []
        for try await id in try await postgres.query(
            "SELECT id FROM strata_jobs WHERE session_name = \(session) AND leased ORDER BY id FOR UPDATE", logger: logger
        ).decode(String.self) { jobs.append(id) }
        var executing = 0
        for id in jobs {
            if try await release(id, reason: reason, maxAttempts: maxAttempts, postgres, logger, notify) { executing += 1 }
        }
        return executing
    }

    /// Ends a job's lease (locked by the caller): an executing job returns to the queue, or completes
    /// ABORTED once it was handed out `maxAttempts` times; a job already completed only loses its lease.
    /// Answers whether the job was executing.
    @discardableResult
    static func release(
        _ jobID: String, reason: String, maxAttempts: Int, _ postgres: PostgresConnection, _ logger: Logger, _ notify: Notifications
    ) async throws -> Bool {
        var found: (stage: Int32, attempts: Int32)?
        for try await row in try await postgres.query(
            "SELECT stage, attempts FROM strata_jobs WHERE id = \(jobID)", logger: logger
        ).decode((Int32, Int32).self) { found = row }
        guard let found else { return false }
        if found.stage != 3 {
            try await postgres.query("UPDATE strata_jobs SET leased = false WHERE id = \(jobID)", logger: logger).consume()
            return false
        }
        if Int(found.attempts) >= maxAttempts {
            let response = try serialized(Build_Bazel_Remote_Execution_V2_ExecuteResponse.with {
                $0.status = StrataError(
                    .aborted,
                    "the action was given to a bot \(found.attempts) times without a result (max-job-attempts \(maxAttempts)); last: \(reason)"
                ).rpcStatus
            })
            try await postgres.query(
                "UPDATE strata_jobs SET stage = 4, response = \(response), completed_at = now(), leased = false WHERE id = \(jobID)",
                logger: logger
            ).consume()
        } else {
            try await postgres.query(
                "UPDATE strata_jobs SET stage = 2, session_name = NULL, bot_id = NULL, assigned_at = NULL, leased = false WHERE id = \(jobID)",
                logger: logger
            ).consume()
            notify.add("queue")
        }
        notify.add("job:\(jobID)")
        return true
    }

    struct OpenSession {
        var instanceName: String
        var botID: String
        var platform: [PlatformProperty]
        var offered: [String]
    }

    /// The session when open (known and not expired); `lock` holds its row shared until the commit.
    static func openSession(_ name: String, lock: Bool, _ postgres: PostgresConnection, _ logger: Logger) async throws -> OpenSession? {
        let suffix = lock ? " FOR SHARE" : ""
        var session: OpenSession?
        for try await (instance, botID, platform, offered) in try await postgres.query(
            PostgresQuery(
                unsafeSQL: """
                    SELECT instance_name, bot_id, platform, offered_properties FROM strata_bot_sessions
                    WHERE name = $1 AND expire_at > now()
                    """ + suffix, binds: try binds([name])), logger: logger
        ).decode((String, String, Data, [String]).self) {
            session = OpenSession(instanceName: instance, botID: botID, platform: try Self.platform(platform), offered: offered)
        }
        return session
    }

    // MARK: Periodic work

    public func run() async throws {
        ensureListening()
        while !Task.isCancelled {
            do {
                try await expireSessions()
                try await timeOutExecutions()
                try await cancelUnwatched()
                try await pruneCompleted()
            } catch {
                if Task.isCancelled { break }
                logger.warning("scheduler maintenance failed; retrying", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: settings.maintenanceInterval)
        }
    }

    /// Closes sessions past their expiry, requeueing their jobs; each claimed by one process.
    func expireSessions() async throws(StrataError) {
        let maxAttempts = settings.maxJobAttempts
        let takenBack = try await transaction("expiring bot sessions") { postgres, logger, notify in
            var takenBack = 0
            var expired: [(String, String)] = []
            for try await row in try await postgres.query(
                "SELECT name, bot_id FROM strata_bot_sessions WHERE expire_at <= now() ORDER BY name LIMIT 100 FOR UPDATE SKIP LOCKED",
                logger: logger
            ).decode((String, String).self) { expired.append(row) }
            for (name, botID) in expired {
                takenBack += try await Self.releaseJobs(
                    of: name, reason: "the session of bot \(botID) expired (no UpdateBotSession within bot-session-keepalive-timeout)",
                    maxAttempts: maxAttempts, postgres, logger, notify)
                try await postgres.query("DELETE FROM strata_bot_sessions WHERE name = \(name)", logger: logger).consume()
                logger.info("bot session expired", metadata: ["session": "\(name)", "bot": "\(botID)"])
            }
            return takenBack
        }
        count(takenBack, .expired)
    }

    /// Completes jobs executing past their timeout with DEADLINE_EXCEEDED; their bots see them cancelled.
    func timeOutExecutions() async throws(StrataError) {
        let maxTimeout = settings.maxExecutionTimeout.milliseconds
        try await transaction("timing out executions") { postgres, logger, notify in
            var late: [(String, String?, String?, Int64)] = []
            for try await row in try await postgres.query(
                """
                SELECT id, session_name, bot_id, coalesce(timeout_ms, \(maxTimeout)) FROM strata_jobs
                WHERE stage = 3 AND assigned_at + coalesce(timeout_ms, \(maxTimeout)) * interval '1 millisecond' < now()
                ORDER BY assigned_at LIMIT 100 FOR UPDATE SKIP LOCKED
                """, logger: logger
            ).decode((String, String?, String?, Int64).self) { late.append(row) }
            for (id, session, botID, timeout) in late {
                let response = try Self.serialized(Build_Bazel_Remote_Execution_V2_ExecuteResponse.with {
                    $0.status = StrataError(
                        .deadlineExceeded,
                        "the action ran longer than its timeout of \(SQLConnection.seconds(.milliseconds(timeout))) on bot \(botID ?? "?")"
                    ).rpcStatus
                })
                try await postgres.query(
                    "UPDATE strata_jobs SET stage = 4, response = \(response), completed_at = now() WHERE id = \(id)", logger: logger
                ).consume()
                notify.add("job:\(id)")
                if let session { notify.add("session:\(session)") }
            }
        }
    }

    /// Cancels operations no client watched for `unwatchedOperationTimeout`.
    func cancelUnwatched() async throws(StrataError) {
        guard let timeout = settings.unwatchedOperationTimeout else { return }
        let milliseconds = timeout.milliseconds
        let watchedHere = watching.withLock { Array($0.keys) }
        try await transaction("cancelling unwatched operations") { postgres, logger, notify in
            if !watchedHere.isEmpty {
                try await postgres.query(
                    "UPDATE strata_operations SET last_watched = now() WHERE name = ANY(\(watchedHere))", logger: logger
                ).consume()
            }
            var names: [String] = []
            for try await name in try await postgres.query(
                """
                SELECT o.name FROM strata_operations o JOIN strata_jobs j ON j.id = o.job_id
                WHERE NOT o.cancelled AND j.stage < 4 AND o.last_watched < now() - \(milliseconds) * interval '1 millisecond'
                ORDER BY o.last_watched LIMIT 100
                """, logger: logger
            ).decode(String.self) { names.append(name) }
            for name in names {
                try await Self.cancel(name, postgres, logger, notify)
                logger.info("operation cancelled: no client watched it", metadata: ["operation": "\(name)"])
            }
        }
    }

    /// Forgets jobs (and their operations) completed more than `completedJobRetention` ago.
    func pruneCompleted() async throws(StrataError) {
        let retention = settings.completedJobRetention.milliseconds
        try await transaction("pruning completed jobs") { postgres, logger, _ in
            try await postgres.query(
                """
                DELETE FROM strata_jobs WHERE id IN (
                    SELECT id FROM strata_jobs WHERE stage = 4 AND NOT leased
                      AND completed_at < now() - \(retention) * interval '1 millisecond'
                    LIMIT 1000 FOR UPDATE SKIP LOCKED)
                """, logger: logger
            ).consume()
        }
    }

    public func statistics() async throws(StrataError) -> SchedulerStatistics {
        try await transaction("reading scheduler statistics") { postgres, logger, _ in
            var statistics = SchedulerStatistics(jobsTakenBack: self.jobsTakenBack.withLock { $0 })
            for try await (stage, count) in try await postgres.query(
                "SELECT stage, count(*) FROM strata_jobs GROUP BY stage", logger: logger
            ).decode((Int32, Int64).self) {
                if let stage = JobStage(rawValue: Int(stage)) { statistics.jobsByStage[stage] = Int(count) }
            }
            for try await (platform, count) in try await postgres.query(
                "SELECT platform, count(*) FROM strata_jobs WHERE stage = 2 GROUP BY platform", logger: logger
            ).decode((Data, Int64).self) {
                statistics.queuedByPlatform[PlatformProperty.label(try Self.platform(platform)), default: 0] += Int(count)
            }
            for try await count in try await postgres.query(
                "SELECT count(*) FROM strata_bot_sessions WHERE expire_at > now()", logger: logger
            ).decode(Int64.self) { statistics.openBotSessions = Int(count) }
            return statistics
        }
    }

    /// How `statistics()` names a platform: its properties, sorted, comma-separated.

    // MARK: Rows

    static let queuedMicros = "(extract(epoch FROM j.queued_at) * 1000000)::int8"

    static func binds(_ values: [any PostgresEncodable & Sendable]) throws -> PostgresBindings {
        var bindings = PostgresBindings()
        for value in values { try bindings.append(value) }
        return bindings
    }

    /// Operations joined with their jobs, selected by `condition` over `o` and `j` with `$n` binds.
    static func snapshots(
        _ postgres: PostgresConnection, _ logger: Logger, where condition: String, _ values: [any PostgresEncodable & Sendable]
    ) async throws -> [(snapshot: OperationSnapshot, queuedMicros: Int64)] {
        let rows = try await postgres.query(
            PostgresQuery(
                unsafeSQL: """
                    SELECT o.name, o.instance_name, o.cancelled, o.request_metadata, j.id, j.digest_function, j.action_hash,
                        j.action_size, j.stage, j.cancelled, j.queued_at, j.platform, j.priority, j.bot_id, j.response,
                        \(queuedMicros)
                    FROM strata_operations o JOIN strata_jobs j ON j.id = o.job_id WHERE
                    """ + " " + condition, binds: try binds(values)), logger: logger)
        var snapshots: [(snapshot: OperationSnapshot, queuedMicros: Int64)] = []
        for try await (name, instance, operationCancelled, metadata, jobID, function, hash, size, stage, jobCancelled, queuedAt, platform,
            priority, botID, response, micros) in rows.decode(
                (String, String, Bool, Data, String, Int32, String, Int64, Int32, Bool, Date, Data, Int32, String?, Data?, Int64).self)
        {
            guard let digestFunction = DigestFunction(rawValue: Int(function)) else {
                throw StrataError.internal("job \(jobID) has an unknown digest function \(function)")
            }
            var snapshot = OperationSnapshot(
                name: name, instanceName: instance, jobID: jobID,
                actionDigest: try Digest(hash: hash, sizeBytes: size, function: digestFunction),
                stage: JobStage(rawValue: Int(stage)) ?? .queued, cancelled: jobCancelled, queuedAt: queuedAt,
                platform: try Self.platform(platform), priority: priority, botID: botID,
                response: try response.map { try Build_Bazel_Remote_Execution_V2_ExecuteResponse(serializedBytes: $0) },
                requestMetadata: try Self.requestMetadata(metadata))
            if operationCancelled {
                // This operation alone was cancelled: it is over for its watchers, the job goes on for others.
                snapshot.stage = .completed
                snapshot.cancelled = true
                snapshot.response = .with { $0.status = StrataError(.cancelled, "the operation was cancelled").rpcStatus }
            }
            snapshots.append((snapshot, micros))
        }
        return snapshots
    }

    /// Sets `waitingReason` on queued operations: why no open session of their instance can take them.
    func withWaitingReasons(_ snapshots: [OperationSnapshot]) async throws(StrataError) -> [OperationSnapshot] {
        let instances = Set(snapshots.filter { $0.stage == .queued }.map(\.instanceName))
        guard !instances.isEmpty else { return snapshots }
        let bots = try await transaction("reading the open bot sessions") { postgres, logger, _ in
            var bots: [String: [[PlatformProperty]]] = [:]
            for try await (instance, platform) in try await postgres.query(
                "SELECT instance_name, platform FROM strata_bot_sessions WHERE expire_at > now() AND instance_name = ANY(\(Array(instances)))",
                logger: logger
            ).decode((String, Data).self) { bots[instance, default: []].append(try Self.platform(platform)) }
            return bots
        }
        return snapshots.map { snapshot in
            guard snapshot.stage == .queued else { return snapshot }
            var snapshot = snapshot
            snapshot.waitingReason = settings.propertySet.waitingReason(job: snapshot.platform, instance: snapshot.instanceName, bots: bots[snapshot.instanceName] ?? [])
            return snapshot
        }
    }


    /// Jobs as their sessions see them, selected by `condition` with `$n` binds.
    static func assigned(
        _ postgres: PostgresConnection, _ logger: Logger, where condition: String, _ values: [any PostgresEncodable & Sendable]
    ) async throws -> [AssignedJob] {
        try await assigned(
            postgres, logger, sql: "SELECT \(assignedColumns) FROM strata_jobs WHERE " + condition, values)
    }

    /// Jobs changed by `update` (an UPDATE without RETURNING), as their sessions see them.
    static func assigned(
        _ postgres: PostgresConnection, _ logger: Logger, update: String, _ values: [any PostgresEncodable & Sendable]
    ) async throws -> [AssignedJob] {
        try await assigned(postgres, logger, sql: update + " RETURNING \(assignedColumns)", values)
    }

    static let assignedColumns =
        "id, instance_name, digest_function, action_hash, action_size, action, do_not_cache, stage, queued_at, assigned_at, lease_delivery"

    private static func assigned(
        _ postgres: PostgresConnection, _ logger: Logger, sql: String, _ values: [any PostgresEncodable & Sendable]
    ) async throws -> [AssignedJob] {
        var jobs: [AssignedJob] = []
        for try await (id, instance, function, hash, size, action, doNotCache, stage, queuedAt, assignedAt, delivery) in try await postgres.query(
            PostgresQuery(unsafeSQL: sql, binds: try binds(values)), logger: logger
        ).decode((String, String, Int32, String, Int64, Data, Bool, Int32, Date, Date?, Int32).self) {
            guard let digestFunction = DigestFunction(rawValue: Int(function)) else {
                throw StrataError.internal("job \(id) has an unknown digest function \(function)")
            }
            jobs.append(AssignedJob(
                jobID: id, instanceName: instance, actionDigest: try Digest(hash: hash, sizeBytes: size, function: digestFunction),
                action: try Build_Bazel_Remote_Execution_V2_Action(serializedBytes: action), doNotCache: doNotCache,
                // Completed while leased: cancelled or timed out, the bot must stop it.
                cancelled: stage == 4, queuedAt: queuedAt, assignedAt: assignedAt ?? queuedAt,
                delivery: LeaseDelivery(rawValue: Int(delivery)) ?? .sent))
        }
        return jobs
    }

    // MARK: Encodings

    /// The values of a job row, encoded.
    struct JobInsert: Sendable {
        var instanceName: String
        var digestFunction: Int32
        var hash: String
        var size: Int64
        var action: Data
        var platform: Data
        var requiredProperties: [String]
        var priority: Int32
        var doNotCache: Bool
        var timeoutMilliseconds: Int64?
        var requestMetadata: Data

        init(request: ExecutionRequest, settings: SchedulerSettings) throws(StrataError) {
            instanceName = request.instanceName
            digestFunction = Int32(request.actionDigest.function.rawValue)
            hash = request.actionDigest.hash
            size = request.actionDigest.sizeBytes
            action = try SQLScheduler.serialized(request.action)
            platform = try SQLScheduler.serialized(PlatformProperty.platform(request.platform))
            let wildcards = settings.propertySet.wildcardPropertyKeys
            requiredProperties = request.platform.filter { !wildcards.contains($0.name) }.map(SQLScheduler.propertyKey)
            priority = request.priority
            doNotCache = request.doNotCache
            timeoutMilliseconds = request.timeout.map { min($0, settings.maxExecutionTimeout).milliseconds }
                ?? settings.maxExecutionTimeout.milliseconds
            requestMetadata = try SQLScheduler.serialized(request.requestMetadata.proto)
        }
    }

    /// A property as one unambiguous string ("{name length}:{name}={value}"), for array containment.
    static func propertyKey(_ property: PlatformProperty) -> String {
        "\(property.name.utf8.count):\(property.name)=\(property.value)"
    }


    static func platform(_ bytes: Data) throws -> [PlatformProperty] {
        PlatformProperty.properties(of: try Build_Bazel_Remote_Execution_V2_Platform(serializedBytes: bytes))
    }


    static func requestMetadata(_ bytes: Data) throws -> ClientRequestMetadata {
        ClientRequestMetadata(try Build_Bazel_Remote_Execution_V2_RequestMetadata(serializedBytes: bytes))
    }

    static func serialized(_ message: some SwiftProtobuf.Message) throws(StrataError) -> Data {
        do { return try message.serializedBytes() } catch {
            throw StrataError.internal("cannot encode \(type(of: message)): \(error)")
        }
    }

    static func operationName(instance: String) -> String {
        let id = UUID().uuidString.lowercased()
        return instance.isEmpty ? "operations/\(id)" : "\(instance)/operations/\(id)"
    }

    static func botSessionName(instance: String) -> String {
        let id = UUID().uuidString.lowercased()
        return instance.isEmpty ? "bots/\(id)" : "\(instance)/bots/\(id)"
    }

    static func unknownOperation(_ name: String) -> StrataError {
        .notFound("operation \"\(StrataError.echo(name))\" is unknown, or was deleted or pruned")
    }

    static func unknownSession(_ name: String) -> StrataError {
        .notFound("bot session \"\(StrataError.echo(name))\" is unknown, closed or expired")
    }
}

extension PostgresRowSequence {
    /// Reads the rows of a statement run for its effect.
    fileprivate func consume() async throws {
        for try await _ in self {}
    }
}
