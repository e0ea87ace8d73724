import Foundation
import StrataAPI
import StrataCore

/// Where remote execution's state lives: jobs (one per distinct action in flight), the operations
/// clients hold on them, and the bot sessions that run them. The Execution, Operations and Bots
/// services are written against this protocol only; `InMemoryScheduler` serves one process and
/// `SQLScheduler` (PostgreSQL) serves several, which wake each other with LISTEN/NOTIFY.
///
/// ## The job state machine (every implementation keeps it; `SchedulerConformance` proves it)
///
///     queued ──assign──▶ executing ──complete──▶ completed
///       ▲                   │
///       └──requeue / bot lost (attempts < max)
///                           └──attempts exhausted, timeout, cancel──▶ completed (status ≠ OK)
///
/// - A job is created QUEUED by `queue(_:)`, or directly COMPLETED by `recordCachedResult`.
/// - `assignJobs` moves QUEUED jobs a session's platform matches to EXECUTING, assigned to that
///   session, by priority (lower value first, as REAPI's `priority`) then queued time.
/// - `completeJob` moves an EXECUTING job of that session to COMPLETED; from a session the job is no
///   longer assigned to, it is ignored (a late report of a requeued job never overwrites the retry).
/// - A job returns to QUEUED when its session closes, expires, is replaced by a new session of the same
///   bot, or the bot gives the lease back; each return counts one attempt, and a job past
///   `maxJobAttempts` completes with ABORTED instead.
/// - A COMPLETED job never changes again; its `ExecuteResponse` is final.
/// - Cancelling: `cancelOperation` marks one operation cancelled (it completes with CANCELLED for its
///   watchers); the job itself is cancelled only when all its operations are, and then completes with
///   CANCELLED; its session sees the job in `assignedJobs` with `cancelled == true` until the bot
///   reports the lease gone or completed.
///
/// Every method may throw `StrataError`s with the spec's codes: NOT_FOUND for an unknown or deleted
/// operation or an unknown, closed or expired bot session; RESOURCE_EXHAUSTED when the queue is full;
/// UNAVAILABLE when the backing database is unreachable.
public protocol Scheduler: Sendable {
    /// What this scheduler was configured with.
    var settings: SchedulerSettings { get }

    // MARK: Execution side

    /// Queues `request`'s action, or joins the in-flight (queued or executing) job of the same action
    /// digest and instance unless either side set `doNotCache`; joining a queued job with a higher
    /// priority (lower value) raises the job's priority. Answers the new operation.
    /// RESOURCE_EXHAUSTED when `maxQueueSize` jobs are already queued.
    func queue(_ request: ExecutionRequest) async throws(StrataError) -> OperationSnapshot

    /// Records an action cache hit as an operation already COMPLETED with `cachedResult: true`, so that
    /// GetOperation/WaitExecution on its name work like for any other.
    func recordCachedResult(_ request: ExecutionRequest, result: Build_Bazel_Remote_Execution_V2_ActionResult) async throws(StrataError) -> OperationSnapshot

    /// The operation named `name`, as it is now. NOT_FOUND when unknown or deleted.
    func operation(_ name: String) async throws(StrataError) -> OperationSnapshot

    /// The operation's current state, then each change, ending after the COMPLETED one. NOT_FOUND
    /// (thrown here, not in the stream) when unknown. Also records that a client is watching it, for
    /// `unwatchedOperationTimeout`, until the stream is dropped.
    func watch(_ name: String) async throws(StrataError) -> AsyncThrowingStream<OperationSnapshot, any Error>

    /// One page of operations matching `query`, sorted by (queued time, name); the token is a cursor.
    /// INVALID_ARGUMENT for a page size below 1 or a token this scheduler did not answer.
    func listOperations(_ query: OperationQuery) async throws(StrataError) -> OperationPage

    /// Cancels one operation (see the state machine). Cancelling a completed operation does nothing.
    func cancelOperation(_ name: String) async throws(StrataError)

    /// Forgets a completed operation (NOT_FOUND afterwards). An unfinished one is cancelled first.
    func deleteOperation(_ name: String) async throws(StrataError)

    // MARK: Bot side

    /// Opens a session for `registration.botID`, closing an open session of the same bot (its jobs
    /// requeued) first. The answer's `name` and `expireTime` are the server's.
    func createBotSession(_ registration: BotRegistration) async throws(StrataError) -> BotSessionRecord

    /// Extends the session's expiry (`botSessionKeepaliveTimeout` from now) and updates what the bot
    /// reports of itself. NOT_FOUND when the session is unknown, closed or expired.
    func renewBotSession(_ name: String, status: BotStatus) async throws(StrataError) -> BotSessionRecord

    /// Closes the session (a bot terminating, or replaced): its unfinished jobs are requeued.
    func closeBotSession(_ name: String, reason: String) async throws(StrataError)

    /// The jobs assigned to the session and not yet completed, with their cancelled flag.
    func assignedJobs(session: String) async throws(StrataError) -> [AssignedJob]

    /// Assigns up to `count` queued jobs the session's platform matches, waiting until `deadline`
    /// for one to arrive when none is queued (a job queued or requeued by any process wakes it);
    /// answers at once when it assigned some, and `[]` at the deadline.
    func assignJobs(session: String, count: Int, deadline: ContinuousClock.Instant) async throws(StrataError) -> [AssignedJob]

    /// Records how far each job's lease got (see `LeaseDelivery`), for the jobs still assigned to the
    /// session; others are ignored. Until the next assignment of the job, `assignedJobs` reports it.
    func recordLeaseDeliveries(session: String, _ deliveries: [String: LeaseDelivery]) async throws(StrataError)

    /// Waits until something changes for the session (a job of it cancelled) or `deadline`.
    /// Answers early on any change, and at once while one of the session's jobs is cancelled (so a
    /// cancellation between the caller's read of `assignedJobs` and this call is never slept
    /// through); the Bots service's long-poll uses it while the bot has no spare capacity.
    func waitForChange(session: String, deadline: ContinuousClock.Instant) async throws(StrataError)

    /// The bot reports the job finished: the job completes with `response` (the Bots service has
    /// already written the action cache when it should). Ignored when the job is not assigned to
    /// `session` any more.
    func completeJob(_ jobID: String, session: String, response: Build_Bazel_Remote_Execution_V2_ExecuteResponse) async throws(StrataError)

    /// The bot gives the job back without a result (it cannot run it, or its lease failed): requeued,
    /// counting one attempt. Ignored when the job is not assigned to `session`.
    func requeueJob(_ jobID: String, session: String, reason: String) async throws(StrataError)

    /// The periodic work: expiring silent bot sessions (requeuing their jobs), completing jobs
    /// executing past their timeout with DEADLINE_EXCEEDED, cancelling operations nobody has watched
    /// for `unwatchedOperationTimeout`, pruning old completed jobs. Runs until cancelled;
    /// `strata serve` runs it beside the server.
    func run() async throws

    /// What the metrics gauges read: queued jobs per platform, jobs per stage, open bot sessions.
    func statistics() async throws(StrataError) -> SchedulerStatistics
}

/// Options of a scheduler (BuildGrid's names in the configuration, in parentheses).
public struct SchedulerSettings: Sendable {
    /// How long a bot session lives without an UpdateBotSession (`bot-session-keepalive-timeout`).
    public var botSessionKeepaliveTimeout: Duration = .seconds(600)
    /// The longest an action may run, and the timeout of actions that set none (`max-execution-timeout`).
    public var maxExecutionTimeout: Duration = .seconds(7200)
    /// How many times a job is handed to a bot before it completes ABORTED (`max-job-attempts`).
    public var maxJobAttempts: Int = 5
    /// The most jobs QUEUED at once; nil for no limit (`max-queue-size`).
    public var maxQueueSize: Int?
    /// An operation no client has watched (Execute/WaitExecution stream) for this long is cancelled;
    /// nil never (`unwatched-operation-timeout`, Strata's: Bazel sends no CancelOperation on Ctrl-C).
    public var unwatchedOperationTimeout: Duration? = .seconds(600)
    /// How long a completed job's operations stay for GetOperation/WaitExecution (`completed-job-retention`).
    public var completedJobRetention: Duration = .seconds(3600)
    /// Which platforms are allowed and how a job's platform matches a bot's (`property-set`).
    public var propertySet: PropertySet = .dynamic(DynamicPropertySet())
    /// How often `run()` does its periodic work (expiring sessions, timeouts, unwatched operations,
    /// pruning): how late past its deadline such a change may happen. Strata's; not in BuildGrid.
    public var maintenanceInterval: Duration = .seconds(1)

    public init() {}
}

/// An Execute request, resolved and checked by the Execution service.
public struct ExecutionRequest: Sendable {
    public var instanceName: String
    public var actionDigest: Digest
    /// The whole Action: what a lease carries (as BuildGrid 0.9.1 sends it).
    public var action: Build_Bazel_Remote_Execution_V2_Action
    /// `Action.platform`, else `Command.platform`, sorted by (name, value); checked by the property set.
    public var platform: [PlatformProperty]
    /// `ExecutionPolicy.priority` (lower runs first; 0 is the default).
    public var priority: Int32
    public var doNotCache: Bool
    /// `Action.timeout`, bounded by `maxExecutionTimeout`; nil for the default.
    public var timeout: Duration?
    /// Who asked, for the operation's listing and logs (tool, invocation id, ...).
    public var requestMetadata: ClientRequestMetadata

    public init(
        instanceName: String, actionDigest: Digest, action: Build_Bazel_Remote_Execution_V2_Action,
        platform: [PlatformProperty], priority: Int32 = 0, doNotCache: Bool = false, timeout: Duration? = nil,
        requestMetadata: ClientRequestMetadata = ClientRequestMetadata()
    ) {
        self.instanceName = instanceName
        self.actionDigest = actionDigest
        self.action = action
        self.platform = platform
        self.priority = priority
        self.doNotCache = doNotCache
        self.timeout = timeout
        self.requestMetadata = requestMetadata
    }
}

/// One platform property, as REAPI's `Platform.Property`.
public struct PlatformProperty: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }

    public static func < (a: Self, b: Self) -> Bool { (a.name, a.value) < (b.name, b.value) }
    public var description: String { "\(name)=\(value)" }

    public init(_ proto: Build_Bazel_Remote_Execution_V2_Platform.Property) {
        self.init(name: proto.name, value: proto.value)
    }

    /// A platform's properties, sorted.
    public static func properties(of platform: Build_Bazel_Remote_Execution_V2_Platform) -> [PlatformProperty] {
        platform.properties.map(PlatformProperty.init).sorted()
    }

    /// The REAPI message listing `properties`.
    public static func platform(_ properties: [PlatformProperty]) -> Build_Bazel_Remote_Execution_V2_Platform {
        .with { platform in
            platform.properties = properties.map { property in .with { $0.name = property.name; $0.value = property.value } }
        }
    }

    /// A platform as one label ("ISA=x86-64,OSFamily=linux", "" for none): the statistics' key.
    public static func label(_ properties: [PlatformProperty]) -> String {
        properties.sorted().map(\.description).joined(separator: ",")
    }
}

/// A job's stage, numbered as REAPI's `ExecutionStage.Value`.
public enum JobStage: Int, Sendable, Comparable, CaseIterable {
    case queued = 2
    case executing = 3
    case completed = 4

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// One operation as a client sees it: what GetOperation, ListOperations and the Execute stream answer.
public struct OperationSnapshot: Sendable, Equatable {
    /// Unique across processes: "{instance}/operations/{uuid}", or "operations/{uuid}" for the
    /// instance "" (so the Operations service knows the instance a name belongs to).
    public var name: String
    public var instanceName: String
    public var jobID: String
    public var actionDigest: Digest
    public var stage: JobStage
    /// Set when the operation (or its job) was cancelled; the response then has status CANCELLED.
    public var cancelled: Bool
    /// When the job was queued; what listings sort by.
    public var queuedAt: Date
    public var platform: [PlatformProperty]
    public var priority: Int32
    /// Why a queued job waits, when no open bot session could take it: "no connected bot offers
    /// OSFamily=windows". Nil when some bot could.
    public var waitingReason: String?
    /// The worker running it (EXECUTING) or that ran it.
    public var botID: String?
    /// Set exactly when `stage == .completed`.
    public var response: Build_Bazel_Remote_Execution_V2_ExecuteResponse?
    public var requestMetadata: ClientRequestMetadata

    public init(
        name: String, instanceName: String, jobID: String, actionDigest: Digest, stage: JobStage, cancelled: Bool = false,
        queuedAt: Date, platform: [PlatformProperty], priority: Int32 = 0, waitingReason: String? = nil, botID: String? = nil,
        response: Build_Bazel_Remote_Execution_V2_ExecuteResponse? = nil, requestMetadata: ClientRequestMetadata = ClientRequestMetadata()
    ) {
        self.name = name
        self.instanceName = instanceName
        self.jobID = jobID
        self.actionDigest = actionDigest
        self.stage = stage
        self.cancelled = cancelled
        self.queuedAt = queuedAt
        self.platform = platform
        self.priority = priority
        self.waitingReason = waitingReason
        self.botID = botID
        self.response = response
        self.requestMetadata = requestMetadata
    }

    public var isDone: Bool { stage == .completed }
}

/// ListOperations' request, parsed by the Operations service.
public struct OperationQuery: Sendable {
    public var instanceName: String
    /// All must hold. Without a stage predicate only unfinished operations are listed (BuildGrid's default).
    public var predicates: [OperationPredicate]
    /// At least 1: the Operations service applies its default and its limit.
    public var pageSize: Int
    /// The cursor a previous page answered; nil for the first page.
    public var pageToken: String?

    public init(instanceName: String, predicates: [OperationPredicate] = [], pageSize: Int, pageToken: String? = nil) {
        self.instanceName = instanceName
        self.predicates = predicates
        self.pageSize = pageSize
        self.pageToken = pageToken
    }
}

/// One clause of ListOperations' filter (BuildGrid's syntax: `stage=COMPLETED & platform=OSFamily:linux`).
public struct OperationPredicate: Sendable, Equatable {
    public enum Field: Sendable, Equatable {
        case stage
        case name
        case actionDigest
        /// One platform property: `platform=KEY:VALUE`.
        case platform
        case queuedTime
        case toolName
        case invocationID
        case correlatedInvocationsID
    }

    public enum Comparison: String, Sendable, Equatable {
        case equal = "="
        case notEqual = "!="
        case less = "<"
        case lessOrEqual = "<="
        case greater = ">"
        case greaterOrEqual = ">="
    }

    public var field: Field
    public var comparison: Comparison
    public var value: String

    public init(field: Field, comparison: Comparison, value: String) {
        self.field = field
        self.comparison = comparison
        self.value = value
    }

    /// Whether `operation` satisfies the clause: one evaluation shared by every scheduler.
    public func matches(_ operation: OperationSnapshot) -> Bool {
        func compare<T: Comparable>(_ a: T, _ b: T) -> Bool {
            switch comparison {
            case .equal: a == b
            case .notEqual: a != b
            case .less: a < b
            case .lessOrEqual: a <= b
            case .greater: a > b
            case .greaterOrEqual: a >= b
            }
        }
        switch field {
        case .stage:
            // REAPI's stage numbers, UNKNOWN and CACHE_CHECK included, so that `stage>CACHE_CHECK` works.
            let stage: Int? = switch value.uppercased() {
            case "UNKNOWN": 0
            case "CACHE_CHECK": 1
            case "QUEUED": JobStage.queued.rawValue
            case "EXECUTING": JobStage.executing.rawValue
            case "COMPLETED": JobStage.completed.rawValue
            default: nil
            }
            guard let stage else { return false }
            return compare(operation.stage.rawValue, stage)
        case .name: return compare(operation.name, value)
        case .actionDigest: return compare("\(operation.actionDigest.hash)/\(operation.actionDigest.sizeBytes)", value)
        case .platform:
            let parts = value.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { return false }
            let has = operation.platform.contains(PlatformProperty(name: parts[0], value: parts[1]))
            return comparison == .notEqual ? !has : (comparison == .equal && has)
        case .queuedTime:
            guard let date = Self.parseTime(value) else { return false }
            return compare(operation.queuedAt, date)
        case .toolName: return compare(operation.requestMetadata.toolName, value)
        case .invocationID: return compare(operation.requestMetadata.toolInvocationID, value)
        case .correlatedInvocationsID: return compare(operation.requestMetadata.correlatedInvocationsID, value)
        }
    }
}

extension OperationPredicate {
    /// A `queued_time` value as BuildGrid reads it (ISO 8601: a date, or a date and time with optional
    /// fractional seconds; without a time zone it is UTC); nil when it is none of these, for the
    /// service to answer INVALID_ARGUMENT.
    public static func parseTime(_ value: String) -> Date? {
        if let date = withZone.date(from: value) ?? withZoneAndFraction.date(from: value) { return date }
        if let date = withZone.date(from: value + "Z") ?? withZoneAndFraction.date(from: value + "Z") { return date }
        return dateOnly.date(from: value)
    }

    // Thread-safe for reading (Foundation's formatters are), and costly to make for every operation listed.
    private nonisolated(unsafe) static let withZone: ISO8601DateFormatter = {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter
    }()

    private nonisolated(unsafe) static let withZoneAndFraction: ISO8601DateFormatter = {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }()

    private nonisolated(unsafe) static let dateOnly: ISO8601DateFormatter = {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        return formatter
    }()
}

public struct OperationPage: Sendable {
    public var operations: [OperationSnapshot]
    /// Empty on the last page.
    public var nextPageToken: String

    public init(operations: [OperationSnapshot], nextPageToken: String) {
        self.operations = operations
        self.nextPageToken = nextPageToken
    }
}

/// What a bot says of itself when it opens a session.
public struct BotRegistration: Sendable {
    /// The session's parent as the bot sent it (the instance name).
    public var instanceName: String
    public var botID: String
    /// Every property of the bot's worker and devices, sorted.
    public var platform: [PlatformProperty]
    /// How many leases it runs at once (`worker.configs` `capacity`, BuildGrid's key), at least 1.
    public var capacity: Int
    public var status: BotStatus

    public init(instanceName: String, botID: String, platform: [PlatformProperty], capacity: Int = 1, status: BotStatus = .ok) {
        self.instanceName = instanceName
        self.botID = botID
        self.platform = platform
        self.capacity = capacity
        self.status = status
    }
}

/// RWAPI's BotStatus values Strata acts on.
public enum BotStatus: Int, Sendable {
    case unspecified = 0
    case ok = 1
    case unhealthy = 2
    case hostRebooting = 3
    case botTerminating = 4
}

public struct BotSessionRecord: Sendable, Equatable {
    /// "{instance}/bots/{uuid}", or "bots/{uuid}" for the instance "".
    public var name: String
    public var instanceName: String
    public var botID: String
    public var platform: [PlatformProperty]
    public var capacity: Int
    public var expireTime: Date

    public init(name: String, instanceName: String, botID: String, platform: [PlatformProperty], capacity: Int, expireTime: Date) {
        self.name = name
        self.instanceName = instanceName
        self.botID = botID
        self.platform = platform
        self.capacity = capacity
        self.expireTime = expireTime
    }
}

/// Whether a lease reached its bot, as far as the server can tell. The Remote Workers API has no
/// acknowledgement (leases go out ACTIVE, as BuildGrid sends them), but a bot reports every lease it
/// holds in each UpdateBotSession: one that leaves out a lease it was sent and never reported most
/// likely never got the answer carrying it (a long-poll cut short on the way back). Kept with the job,
/// so every bots process sharing the scheduler sees it.
public enum LeaseDelivery: Int, Sendable, Equatable {
    /// Sent to the bot (or about to be), not reported back yet.
    case sent = 0
    /// Left out of the bot's report and sent once more: left out again, it goes back to the queue.
    case resent = 1
    /// The bot reported it: it holds it, and leaving it out later gives it back.
    case reported = 2
}

/// A job as its bot session sees it: what becomes a lease.
public struct AssignedJob: Sendable, Equatable {
    public var jobID: String
    public var instanceName: String
    public var actionDigest: Digest
    public var action: Build_Bazel_Remote_Execution_V2_Action
    public var doNotCache: Bool
    /// Set when every operation of the job was cancelled: the lease goes to the bot as CANCELLED.
    public var cancelled: Bool
    /// When the job was queued and assigned, for the ActionResult's execution metadata.
    public var queuedAt: Date
    public var assignedAt: Date
    /// `sent` when assigned; what the Bots service records with `recordLeaseDeliveries` after.
    public var delivery: LeaseDelivery

    public init(
        jobID: String, instanceName: String, actionDigest: Digest, action: Build_Bazel_Remote_Execution_V2_Action,
        doNotCache: Bool, cancelled: Bool = false, queuedAt: Date, assignedAt: Date, delivery: LeaseDelivery = .sent
    ) {
        self.delivery = delivery
        self.jobID = jobID
        self.instanceName = instanceName
        self.actionDigest = actionDigest
        self.action = action
        self.doNotCache = doNotCache
        self.cancelled = cancelled
        self.queuedAt = queuedAt
        self.assignedAt = assignedAt
    }
}

/// Why a scheduler took its executing jobs back from a bot session it closed (the jobs went back to
/// the queue, or completed ABORTED past `max-job-attempts`).
public enum SessionEnding: String, Sendable, CaseIterable {
    /// The bot sent no UpdateBotSession within `bot-session-keepalive-timeout`: lost (crashed,
    /// partitioned, killed).
    case expired = "session-expired"
    /// The bot said it was terminating, or opened a new session (it restarted).
    case closed = "session-closed"
}

public struct SchedulerStatistics: Sendable, Equatable {
    /// QUEUED jobs by platform, keyed by its properties as `name=value` joined with "," in the
    /// request's (sorted) order: "ISA=x86-64,OSFamily=linux"; "" for an empty platform.
    public var queuedByPlatform: [String: Int]
    /// Jobs held by the scheduler in each stage (completed ones until pruned).
    public var jobsByStage: [JobStage: Int]
    public var openBotSessions: Int
    /// Executing jobs taken back from closed bot sessions since this scheduler object was made, by
    /// why the session ended: a running count, of this process's closings when several processes
    /// share the scheduler's database (each process exports its own share, which the metrics sum).
    public var jobsTakenBack: [SessionEnding: Int]

    public init(
        queuedByPlatform: [String: Int] = [:], jobsByStage: [JobStage: Int] = [:], openBotSessions: Int = 0,
        jobsTakenBack: [SessionEnding: Int] = [:]
    ) {
        self.queuedByPlatform = queuedByPlatform
        self.jobsByStage = jobsByStage
        self.openBotSessions = openBotSessions
        self.jobsTakenBack = jobsTakenBack
    }
}
