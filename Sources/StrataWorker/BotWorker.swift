import Foundation
import Logging
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import SwiftProtobuf
import Synchronization

public typealias Lease = Google_Devtools_Remoteworkers_V1test2_Lease

/// `strata worker`'s bot: a Remote Workers API session (CreateBotSession, then UpdateBotSession in a
/// loop), each lease run by the `Runner` and reported COMPLETED with its ActionResult as the lease's
/// `result` and the action's status as its `status` (what BuildGrid 0.9.1's Bots service reads).
///
/// - UpdateBotSession is a long-poll: the server holds it until work comes or `longPollTimeout`;
///   a lease finishing locally interrupts it, so results are reported at once (a lease the server had
///   assigned meanwhile comes back in the next answer, which lists the session's leases again).
/// - A lease the server sets CANCELLED, or drops from the session (BuildGrid's way of cancelling), has
///   its command's process group killed and is forgotten.
/// - NOT_FOUND on UpdateBotSession (the session expired or was closed): its leases are dropped (the
///   server requeued them) and a new session is created.
/// - `terminate()` (SIGTERM, SIGINT): running commands are killed at once, not waited for; their leases
///   are reported UNAVAILABLE so that the server runs them elsewhere, and a last UpdateBotSession says
///   BOT_TERMINATING with no capacity left.
public final class BotWorker: Sendable {
    public struct Settings: Sendable {
        public var botID: String
        public var platform: [(name: String, value: String)] = []
        public var capacity = 1
        /// How long the server may hold an UpdateBotSession (well under any keepalive timeout).
        public var longPollTimeout: Duration = .seconds(30)
        /// The pause between UpdateBotSessions while every slot is busy and the server answers at once.
        public var heartbeat: Duration = .seconds(5)
        /// The pause before the next UpdateBotSession when a slot is free and the server answered at
        /// once an update that reported nothing (a server that does not long-poll).
        public var idlePause: Duration = .seconds(1)
        /// Where each action gets its own directory.
        public var workDirectory: String

        public init(botID: String, workDirectory: String) {
            self.botID = botID
            self.workDirectory = workDirectory
        }
    }

    let bots: RemoteBots
    let runner: any Runner
    /// The CAS, for Actions leases name by digest.
    let context: RunnerContext
    let settings: Settings
    let logger: Logger
    private let wake = WakeSignal()

    private struct State {
        var running: [String: Task<Void, Never>] = [:]
        /// Finished leases not yet acknowledged by the server, ready to report.
        var finished: [String: Lease] = [:]
        var terminating = false
        var completedCount = 0
    }

    private let state = Mutex(State())

    public init(bots: RemoteBots, runner: any Runner, context: RunnerContext, settings: Settings, logger: Logger) {
        self.bots = bots
        self.runner = runner
        self.context = context
        self.settings = settings
        self.logger = logger
    }

    /// Leases completed (reported or not) since the worker started.
    public var completedLeases: Int { state.withLock { $0.completedCount } }

    /// Asks `run()` to stop (see the type's comment). Safe from any thread, e.g. a signal handler.
    public func terminate() {
        state.withLock { $0.terminating = true }
        wake.signal()
    }

    private var isTerminating: Bool { state.withLock { $0.terminating } }

    func registration(status: Google_Devtools_Remoteworkers_V1test2_BotStatus = .ok, capacity: Int? = nil) -> BotSession {
        .with {
            $0.botID = settings.botID
            $0.status = status
            $0.worker = .with {
                // BuildGrid matches the primary (first) device's properties.
                $0.devices = [.with { device in
                    device.handle = settings.botID
                    device.properties = settings.platform.map { property in .with {
                        $0.key = property.name
                        $0.value = property.value
                    } }
                }]
                $0.configs = [.with {
                    $0.key = "capacity"
                    $0.value = String(capacity ?? settings.capacity)
                }]
            }
        }
    }

    /// Runs sessions until `terminate()`; errors reaching the server are logged and retried.
    public func run() async {
        var session: BotSession?
        var failures = 0
        while !isTerminating {
            let started = ContinuousClock.now
            do {
                var startedWork = false
                // Whether this update reports finished leases: a server answers it at once, which is
                // no reason to pause before the next long-poll.
                var reportedResults = false
                if let current = session {
                    wake.reset()
                    reportedResults = state.withLock { !$0.finished.isEmpty }
                    let outgoing = reporting(current)
                    guard let answer = try await untilWoken({ try await self.bots.update(outgoing, wait: self.settings.longPollTimeout) }) else {
                        continue  // a lease finished or the worker terminates: report it now
                    }
                    session = answer
                    startedWork = reconcile(&session!)
                } else {
                    var created = try await bots.create(registration(), wait: settings.longPollTimeout)
                    logger.info("bot session \(created.name) opened", metadata: ["bot": "\(settings.botID)"])
                    startedWork = reconcile(&created)
                    session = created
                }
                failures = 0
                // A server that answers at once although nothing was reported (BuildGrid does when
                // every slot is busy) is asked again after a pause, or as soon as a lease finishes. An
                // answer to a report of results is immediate by design: the next long-poll follows at
                // once (pausing there kept queued work waiting up to a second).
                if !startedWork && !reportedResults && ContinuousClock.now - started < .seconds(1) {
                    let busy = state.withLock { $0.running.count >= settings.capacity }
                    await wake.next(timeout: busy ? settings.heartbeat : settings.idlePause)
                }
            } catch let error as StrataError where error.code == .notFound && session != nil {
                logger.warning("bot session \(session!.name) is gone (\(error.message)); its leases are dropped and a new session is opened")
                dropAll()
                session = nil
            } catch {
                failures += 1
                let pause = Duration.milliseconds(min(200 << min(failures, 6), 10_000))
                logger.warning("Bots service: \(error); trying again in \(pause)")
                await wake.next(timeout: pause)
            }
        }
        await shutDown(session)
    }

    /// Runs `call`, unless the wake signal comes first (then nil; the call is cancelled).
    private func untilWoken<T: Sendable>(_ call: @escaping @Sendable () async throws -> T) async throws -> T? {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await call() }
            group.addTask {
                await self.wake.next()
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
    }

    /// The session to send: finished leases COMPLETED with their results, the others ACTIVE.
    private func reporting(_ session: BotSession) -> BotSession {
        var session = session
        let finished = state.withLock { $0.finished }
        session.leases = session.leases.map { lease in finished[lease.id] ?? { var active = lease; active.state = .active; return active }() }
        return session
    }

    /// Takes the server's answer: starts new leases, kills cancelled or dropped ones, forgets the
    /// acknowledged. Whether a lease was started.
    private func reconcile(_ session: inout BotSession) -> Bool {
        var started: [Lease] = []
        var cancelled: [Task<Void, Never>] = []
        let offered = Set(session.leases.map(\.id))
        state.withLock { state in
            for (id, task) in state.running where !offered.contains(id) {
                cancelled.append(task)
                state.running[id] = nil
            }
            for id in state.finished.keys where !offered.contains(id) { state.finished[id] = nil }
        }
        var kept: [Lease] = []
        for var lease in session.leases {
            switch lease.state {
            case .cancelled, .completed:
                state.withLock { state in
                    if let task = state.running.removeValue(forKey: lease.id) { cancelled.append(task) }
                    state.finished[lease.id] = nil
                }
            default:
                let isNew = state.withLock { $0.running[lease.id] == nil && $0.finished[lease.id] == nil }
                if isNew { started.append(lease) }
                lease.state = .active
                kept.append(lease)
            }
        }
        session.leases = kept
        for task in cancelled { task.cancel() }
        if !cancelled.isEmpty { logger.info("\(cancelled.count) lease(s) cancelled by the server: their commands were killed") }
        for lease in started { start(lease) }
        return !started.isEmpty
    }

    private func start(_ lease: Lease) {
        let task = Task {
            let completed = await self.execute(lease)
            guard !Task.isCancelled, let completed else { return }
            self.state.withLock { state in
                guard state.running.removeValue(forKey: lease.id) != nil else { return }
                state.finished[lease.id] = completed
                state.completedCount += 1
            }
            self.wake.signal()
        }
        state.withLock { $0.running[lease.id] = task }
    }

    private func dropAll() {
        let tasks = state.withLock { state in
            let tasks = Array(state.running.values)
            state.running = [:]
            state.finished = [:]
            return tasks
        }
        for task in tasks { task.cancel() }
    }

    /// Kills what runs, reports it UNAVAILABLE (the server runs it elsewhere) with whatever finished,
    /// and says BOT_TERMINATING.
    private func shutDown(_ session: BotSession?) async {
        let tasks = state.withLock { Array($0.running) }
        for (_, task) in tasks { task.cancel() }
        for (_, task) in tasks { await task.value }
        guard var session else { return }
        state.withLock { state in
            for (id, _) in tasks {
                state.running[id] = nil
                guard let lease = session.leases.first(where: { $0.id == id }) else { continue }
                var given = lease
                given.state = .completed
                given.status = .with {
                    $0.code = Int32(StrataError.Code.unavailable.rawValue)
                    $0.message = "worker \(settings.botID) is terminating; the action was stopped and should run elsewhere"
                }
                state.finished[id] = given
            }
        }
        session = reporting(session)
        session.status = .botTerminating
        session.worker = registration(capacity: 0).worker
        do {
            _ = try await bots.update(session, wait: .seconds(5))
            logger.info("bot session \(session.name) terminated; \(tasks.count) running action(s) were killed and given back")
        } catch {
            logger.warning("bot session \(session.name): the last update failed: \(error)")
        }
    }

    // MARK: One lease

    /// Runs the lease's action; the lease COMPLETED with its result and status, or nil when cancelled.
    func execute(_ lease: Lease) async -> Lease? {
        var completed = lease
        completed.state = .completed
        let workerStart = Google_Protobuf_Timestamp.now
        let directory = settings.workDirectory + "/" + UUID().uuidString.lowercased()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let (action, digest) = try await leaseAction(lease)
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var timeout: Duration?
            if action.hasTimeout, action.timeout.seconds > 0 || action.timeout.nanos > 0 {
                timeout = .seconds(action.timeout.seconds) + .nanoseconds(Int64(action.timeout.nanos))
            }
            logger.info("lease \(lease.id): running action \(digest)")
            var outcome = try await runner.run(RunnerJob(actionDigest: digest, action: action, timeout: timeout, directory: directory))
            outcome.result.executionMetadata.worker = settings.botID
            outcome.result.executionMetadata.workerStartTimestamp = workerStart
            outcome.result.executionMetadata.workerCompletedTimestamp = .now
            completed.result = try Google_Protobuf_Any(message: outcome.result)
            completed.status = outcome.status
            logger.info("lease \(lease.id): action \(digest) done, exit code \(outcome.result.exitCode), status \(outcome.status.code)")
        } catch is CancellationError {
            return nil
        } catch let missing as MissingInputs {
            completed.status = missing.status
        } catch {
            if Task.isCancelled { return nil }
            let failure = StrataError.from(error)
            logger.warning("lease \(lease.id): \(failure)")
            completed.status = failure.rpcStatus
        }
        return completed
    }

    /// The lease's Action: its payload (BuildGrid sends the whole Action) or the Action its payload's
    /// Digest names, read from the CAS.
    func leaseAction(_ lease: Lease) async throws -> (Action, Digest) {
        let payload = lease.payload
        if payload.isA(Action.self) {
            let action = try Action(unpackingAny: payload)
            // The Action's digest function is its digests': the one whose hash length they have.
            let function = try DigestFunction.resolve(protoValue: 0, hash: action.commandDigest.hash)
            return (action, Digest.of(try action.serializedData(), function: function))
        }
        if payload.isA(Build_Bazel_Remote_Execution_V2_Digest.self) {
            let proto = try Build_Bazel_Remote_Execution_V2_Digest(unpackingAny: payload)
            let digest = try Digest(proto, function: try DigestFunction.resolve(protoValue: 0, hash: proto.hash))
            return (try await context.message(Action.self, digest, what: "the lease's Action"), digest)
        }
        throw StrataError.invalidArgument("lease \(lease.id): the payload is a \(payload.typeURL), not an Action or a Digest of one")
    }
}

