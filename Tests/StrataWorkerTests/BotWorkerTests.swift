import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import SwiftProtobuf
import Synchronization
import Testing
@testable import StrataWorker

typealias BotsRequestCreate = Google_Devtools_Remoteworkers_V1test2_CreateBotSessionRequest
typealias BotsRequestUpdate = Google_Devtools_Remoteworkers_V1test2_UpdateBotSessionRequest

/// A Bots service that hands out the leases a test gives it and records what the bot reports: enough
/// of the Remote Workers API to drive the bot's loop through each case. Cancelling a lease either sets
/// it CANCELLED in the answers (the spec's way) or drops it from the session (BuildGrid's).
final class ScriptedBots: Google_Devtools_Remoteworkers_V1test2_Bots.SimpleServiceProtocol, Sendable {
    enum CancelStyle: Sendable { case cancelledState, dropped }
    struct State {
        var sessions: [String: BotSession] = [:]
        var created = 0
        var offers: [Lease] = []
        var cancelled: Set<String> = []
        var completed: [String: Lease] = [:]
        var lastStatus: Google_Devtools_Remoteworkers_V1test2_BotStatus = .unspecified
        var lastLeases: [Lease] = []
    }
    let state = Mutex(State())
    let cancelStyle: CancelStyle
    /// Whether an update that reports nothing finished waits (up to 1.5 s, under the test bot's 2 s
    /// long-poll timeout) for a lease to offer, as a real Bots service's long-poll does; otherwise
    /// every update is answered at once.
    let longPolls: Bool

    init(cancelStyle: CancelStyle = .cancelledState, longPolls: Bool = false) {
        self.cancelStyle = cancelStyle
        self.longPolls = longPolls
    }

    func offer(_ lease: Lease) { state.withLock { $0.offers.append(lease) } }
    func cancel(_ id: String) { state.withLock { _ = $0.cancelled.insert(id) } }
    func forgetSessions() { state.withLock { $0.sessions = [:] } }

    func createBotSession(request: BotsRequestCreate, context: ServerContext) async throws -> BotSession {
        state.withLock { state in
            state.created += 1
            var session = request.botSession
            session.name = "\(request.parent)/bots/\(state.created)"
            session.leases = state.offers
            state.offers = []
            state.sessions[session.name] = session
            return session
        }
    }

    func postBotEventTemp(
        request: Google_Devtools_Remoteworkers_V1test2_PostBotEventTempRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        Google_Protobuf_Empty()
    }

    func updateBotSession(request: BotsRequestUpdate, context: ServerContext) async throws -> BotSession {
        if longPolls, !request.botSession.leases.contains(where: { $0.state == .completed }) {
            let deadline = ContinuousClock.now + .milliseconds(1500)
            while ContinuousClock.now < deadline, state.withLock({ $0.offers.isEmpty }) {
                // A poll the bot gave up (it had a result to report) must not take the offers.
                if context.cancellation.isCancelled { throw RPCError(code: .cancelled, message: "the bot gave up this poll") }
                try await Task.sleep(for: .milliseconds(20))
            }
            if context.cancellation.isCancelled { throw RPCError(code: .cancelled, message: "the bot gave up this poll") }
        }
        return try state.withLock { state in
            guard state.sessions[request.name] != nil else { throw RPCError(code: .notFound, message: "no bot session \(request.name)") }
            state.lastStatus = request.botSession.status
            state.lastLeases = request.botSession.leases
            var answer = request.botSession
            answer.leases = []
            for lease in request.botSession.leases {
                if lease.state == .completed {
                    state.completed[lease.id] = lease
                } else if state.cancelled.contains(lease.id) {
                    if cancelStyle == .cancelledState {
                        var cancelled = lease
                        cancelled.state = .cancelled
                        answer.leases.append(cancelled)
                    }
                } else {
                    answer.leases.append(lease)
                }
            }
            answer.leases += state.offers
            state.offers = []
            state.sessions[request.name] = answer
            return answer
        }
    }
}

/// Runs `body` with a BotWorker (host runner) on `bots` and the fixture's CAS, then terminates it.
func withBot<T: Sendable>(
    _ fixture: WorkerFixture, _ bots: ScriptedBots, idlePause: Duration = .seconds(1), _ body: @Sendable (BotWorker) async throws -> T
) async throws -> T {
    let server = GRPCServer(
        transport: HTTP2ServerTransport.Posix(address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext),
        services: [bots])
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.serve() }
        guard let port = try await server.listeningAddress?.ipv4?.port else { throw StrataError.internal("no port") }
        var options = RemoteChannel.Options()
        options.instanceName = "main"
        let channel = try RemoteChannel(url: "http://127.0.0.1:\(port)", options: options)
        group.addTask { try await channel.run() }
        var settings = BotWorker.Settings(botID: "bot-1", workDirectory: try fixture.newDirectory("actions"))
        settings.platform = [("OSFamily", "linux")]
        settings.longPollTimeout = .seconds(2)
        settings.heartbeat = .milliseconds(200)
        settings.idlePause = idlePause
        let worker = BotWorker(
            bots: RemoteBots(channel: channel), runner: HostRunner(context: fixture.context), context: fixture.context,
            settings: settings, logger: Logger(label: "test.worker"))
        let running = Task { await worker.run() }
        let result: Result<T, any Error>
        do {
            result = .success(try await body(worker))
        } catch {
            result = .failure(error)
        }
        worker.terminate()
        await running.value
        channel.shutdown()
        server.beginGracefulShutdown()
        try await group.waitForAll()
        return try result.get()
    }
}

/// Polls `condition` every 50 ms for up to `seconds`.
func eventually(_ seconds: Double = 30, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return condition()
}

func lease(_ id: String, payload: some SwiftProtobuf.Message) throws -> Lease {
    .with {
        $0.id = id
        $0.state = .pending
        $0.payload = try! Google_Protobuf_Any(message: payload)
    }
}

@Suite("Bot session loop")
struct BotWorkerTests {
    @Test("leases carrying an Action or its Digest run and are reported COMPLETED with the ActionResult and status")
    func runsLeases() async throws {
        try await withWorkerFixture { fixture in
            let bots = ScriptedBots()
            let (action, digest) = try await fixture.action(shellCommand("echo hi > out.txt", outputPaths: ["out.txt"]))
            let (failing, _) = try await fixture.action(shellCommand("exit 7"))
            bots.offer(try lease("main/by-digest", payload: digest.proto))
            bots.offer(try lease("main/whole-action", payload: failing))
            try await withBot(fixture, bots) { _ in
                #expect(await eventually { bots.state.withLock { $0.completed.count } == 2 })
                let completed = bots.state.withLock { $0.completed }
                let first = try #require(completed["main/by-digest"])
                #expect(first.status.code == 0)
                let result = try ActionResult(unpackingAny: first.result)
                #expect(result.exitCode == 0)
                #expect(result.outputFiles.map(\.path) == ["out.txt"])
                #expect(result.executionMetadata.worker == "bot-1")
                #expect(result.executionMetadata.hasWorkerStartTimestamp && result.executionMetadata.hasWorkerCompletedTimestamp)
                let second = try #require(completed["main/whole-action"])
                #expect(try ActionResult(unpackingAny: second.result).exitCode == 7)
                #expect(second.status.code == 0)
                _ = action
            }
        }
    }

    /// A report of finished leases is answered at once by a long-polling server: the next long-poll
    /// must follow at once. (The worker paused a second there, so with one client each queued action
    /// waited up to a second for a free worker: 2 actions/s instead of ~190.)
    @Test("after reporting a result the worker long-polls again at once, without its idle pause")
    func longPollsRightAfterReporting() async throws {
        try await withWorkerFixture { fixture in
            let bots = ScriptedBots(longPolls: true)
            let (first, _) = try await fixture.action(shellCommand("true"))
            let (second, _) = try await fixture.action(shellCommand("echo second"))
            bots.offer(try lease("main/first", payload: first))
            // An idle pause far longer than the bound below: only an immediate long-poll passes.
            try await withBot(fixture, bots, idlePause: .seconds(120)) { _ in
                #expect(await eventually { bots.state.withLock { $0.completed.count } == 1 })
                try await Task.sleep(for: .milliseconds(300))
                bots.offer(try lease("main/second", payload: second))
                #expect(await eventually(30) { bots.state.withLock { $0.completed["main/second"] } != nil },
                        "the second lease was not taken while the worker paused after reporting the first")
            }
        }
    }

    @Test("a lease the server cancels, or drops from the session, has its command's process group killed", arguments: [
        ScriptedBots.CancelStyle.cancelledState, .dropped,
    ])
    func cancelledLease(style: ScriptedBots.CancelStyle) async throws {
        try await withWorkerFixture { fixture in
            let bots = ScriptedBots(cancelStyle: style)
            let pidFile = fixture.scratch + "/child.pid"
            let (_, digest) = try await fixture.action(shellCommand("sleep 300 & echo $! > \(pidFile); sleep 300"))
            bots.offer(try lease("main/long", payload: digest.proto))
            try await withBot(fixture, bots) { _ in
                #expect(await eventually { FileManager.default.fileExists(atPath: pidFile) && contents(pidFile)?.hasSuffix("\n") == true })
                let child = try #require(contents(pidFile).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
                bots.cancel("main/long")
                #expect(await processIsGone(child, within: 30), "the cancelled lease's background child \(child) still runs")
                // The lease is forgotten, not reported.
                #expect(await eventually(5) { bots.state.withLock { $0.lastLeases.isEmpty } })
                #expect(bots.state.withLock { $0.completed.isEmpty })
            }
        }
    }

    @Test("NOT_FOUND on UpdateBotSession: a new session is created")
    func newSessionAfterNotFound() async throws {
        try await withWorkerFixture { fixture in
            let bots = ScriptedBots()
            try await withBot(fixture, bots) { _ in
                #expect(await eventually { bots.state.withLock { $0.created } == 1 })
                bots.forgetSessions()
                #expect(await eventually { bots.state.withLock { $0.created } == 2 })
                // The new session works: a lease offered now runs.
                let (_, digest) = try await fixture.action(shellCommand("true"))
                bots.offer(try lease("main/after", payload: digest.proto))
                #expect(await eventually { bots.state.withLock { $0.completed["main/after"] != nil } })
            }
        }
    }

    @Test("terminate(): the running command is killed, its lease given back UNAVAILABLE, the session ends BOT_TERMINATING")
    func terminateGivesWorkBack() async throws {
        try await withWorkerFixture { fixture in
            let bots = ScriptedBots()
            let pidFile = fixture.scratch + "/child.pid"
            let (_, digest) = try await fixture.action(shellCommand("sleep 300 & echo $! > \(pidFile); sleep 300"))
            bots.offer(try lease("main/long", payload: digest.proto))
            let child: pid_t = try await withBot(fixture, bots) { worker in
                #expect(await eventually { contents(pidFile)?.hasSuffix("\n") == true })
                return try #require(contents(pidFile).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
            }
            #expect(await processIsGone(child, within: 30))
            let (status, given) = bots.state.withLock { ($0.lastStatus, $0.completed["main/long"]) }
            #expect(status == .botTerminating)
            #expect(given?.status.code == Int32(StrataError.Code.unavailable.rawValue))
        }
    }
}
