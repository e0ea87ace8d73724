import Foundation
import GRPCCore
import StrataAPI
import StrataActionCache
import StrataCore
@testable import StrataExecution
import StrataProto
import StrataScheduler
import StrataServer
import StrataStorage
import SwiftProtobuf
import Testing

@Suite struct ExecutionServiceTests {
    @Test func anActionRunsOnABotAndItsResultIsCached() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["true"], platform: [("OSFamily", "linux")])
            let stream = Task { try await server.execute(server.executeRequest(digest)) }
            var session = try await server.createBot("bot-1", properties: [("OSFamily", "linux")])
            while session.leases.isEmpty { session = try await server.update(session) }
            let lease = session.leases[0]
            #expect(lease.state == .active)
            let payload = try ActionMessage(unpackingAny: lease.payload)
            #expect(Digest.of(try payload.serializedBytes() as Data) == digest)

            session.leases = [try lease.completed(.with { $0.exitCode = 0; $0.stdoutRaw = Data("hi".utf8) })]
            // A report that changes something is answered at once, not after a 48 s long-poll.
            let reported = ContinuousClock.now
            session = try await server.update(session, timeout: .seconds(60))
            #expect(ContinuousClock.now - reported < .seconds(30))
            #expect(session.leases.isEmpty)

            let operations = try await stream.value
            #expect(operations.first?.stage == .queued)
            #expect(operations.last?.done == true)
            #expect(operations.allSatisfy { !$0.hasError })
            #expect(operations.map(\.stage).contains(.executing))
            let response = try #require(operations.last?.executeResponse)
            #expect(response.status.code == 0)
            #expect(!response.cachedResult)
            #expect(response.result.stdoutRaw == Data("hi".utf8))
            // Filled by the server: the bot left them empty.
            #expect(response.result.executionMetadata.worker == "bot-1")
            #expect(response.result.executionMetadata.hasQueuedTimestamp)
            #expect(operations.last?.executeMetadata?.actionDigest == digest.proto)
            #expect(operations.last?.executeMetadata?.digestFunction == .sha256)

            let cached = try await server.cache.get(digest)
            #expect(cached?.stdoutRaw == Data("hi".utf8))

            // A second Execute is a cache hit, answered at once.
            let hit = try await server.execute(server.executeRequest(digest))
            #expect(hit.count == 1)
            #expect(hit[0].done)
            #expect(hit[0].executeResponse?.cachedResult == true)
            // And GetOperation knows the hit's operation.
            let got = try await server.operations.getOperation(.with { $0.name = hit[0].name })
            #expect(got.done && got.executeResponse?.cachedResult == true)
        }
    }

    /// BLAKE3 has SHA-256's hash length: only the request's digest_function tells them apart. The
    /// job, its lease and the cached result keep the function.
    @Test func theRequestsDigestFunctionIsHonoured() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["true"], function: .blake3)
            let stream = Task { try await server.execute(server.executeRequest(digest)) }
            var session = try await server.createBot("bot")
            while session.leases.isEmpty { session = try await server.update(session, timeout: .seconds(5)) }
            session.leases = [try session.leases[0].completed(.with { $0.exitCode = 0 })]
            _ = try await server.update(session, timeout: .seconds(1))
            let operations = try await stream.value
            #expect(operations.last?.executeMetadata?.digestFunction == .blake3)
            #expect(operations.last?.executeResponse?.status.code == 0)
            #expect(try await server.cache.get(digest) != nil)
            #expect(try await server.cache.get(try Digest(hash: digest.hash, sizeBytes: digest.sizeBytes, function: .sha256)) == nil)
        }
    }

    @Test func skipCacheLookupRunsTheActionAgain() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["true"])
            try await server.cache.update(digest, .with { $0.exitCode = 0 })
            let operation = try await server.startExecution(digest, skipCacheLookup: true)
            #expect(!operation.done)
            #expect(operation.stage == .queued)
        }
    }

    @Test func missingBlobsAreAPreconditionFailureNamingEach() async throws {
        try await withExecutionServer { server in
            let absent = Digest.of(Data("no such action".utf8))
            let error = try #require(await rpcFailure { _ = try await server.execute(server.executeRequest(absent)) })
            #expect(error.code == .failedPrecondition)
            #expect(try Self.violations(error) == ["MISSING blobs/\(absent.hash)/\(absent.sizeBytes)"])

            let partial = try await server.storeAction(["x"], storeCommand: false, storeInputRoot: false)
            let second = try #require(await rpcFailure { _ = try await server.execute(server.executeRequest(partial)) })
            #expect(second.code == .failedPrecondition)
            #expect(second.message.contains("Command") && second.message.contains("input root"), "\(second.message)")
            #expect(try Self.violations(second).count == 2)

            // The Command is read while the input root is looked for: each missing alone is named alone.
            // (The input root is the same Directory for every action: the one missing it comes first.)
            for (storeCommand, missingWhat) in [(true, "input root"), (false, "Command")] {
                let action = try await server.storeAction(
                    ["y", missingWhat], storeCommand: storeCommand, storeInputRoot: !storeCommand)
                let failure = try #require(await rpcFailure { _ = try await server.execute(server.executeRequest(action)) })
                #expect(failure.code == .failedPrecondition)
                #expect(failure.message.contains(missingWhat), "\(failure.message)")
                #expect(try Self.violations(failure).count == 1, "\(failure.message)")
            }
        }
    }

    static func violations(_ error: RPCError) throws -> [String] {
        let bytes = try #require(error.metadata[binaryValues: "grpc-status-details-bin"].first(where: { _ in true }))
        let status = try Google_Rpc_Status(serializedBytes: bytes)
        #expect(status.code == Int32(RPCError.Code.failedPrecondition.rawValue))
        return try status.details.flatMap { detail in
            try Google_Rpc_PreconditionFailure(unpackingAny: detail).violations.map { "\($0.type) \($0.subject)" }
        }
    }

    @Test func aTimeoutPastTheMaximumIsInvalid() async throws {
        var settings = SchedulerSettings()
        settings.maxExecutionTimeout = .seconds(60)
        try await withExecutionServer(settings: settings) { server in
            let digest = try await server.storeAction(["sleep", "100"], timeout: .seconds(61))
            let error = try #require(await rpcFailure { _ = try await server.execute(server.executeRequest(digest)) })
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("max-execution-timeout"), "\(error.message)")
            let fine = try await server.storeAction(["sleep", "1"], timeout: .seconds(60))
            #expect(try await server.startExecution(fine).stage == .queued)
        }
    }

    @Test func anUnregisteredPlatformPropertyIsAPreconditionFailureNamingIt() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["true"], platform: [("colour", "blue")])
            let error = try #require(await rpcFailure { _ = try await server.execute(server.executeRequest(digest)) })
            #expect(error.code == .failedPrecondition)
            #expect(error.message.contains("colour"), "\(error.message)")
        }
    }

    @Test func aJobNoBotCanTakeSaysWhyInItsMetadata() async throws {
        try await withExecutionServer { server in
            _ = try await server.createBot("linux-bot", properties: [("OSFamily", "linux")])
            let digest = try await server.storeAction(["dir"], platform: [("OSFamily", "windows")])
            let operation = try await server.startExecution(digest)
            let got = try await server.operations.getOperation(.with { $0.name = operation.name })
            let auxiliary = try #require(got.executeMetadata?.partialExecutionMetadata.auxiliaryMetadata.first)
            let reason = try Google_Protobuf_StringValue(unpackingAny: auxiliary).value
            #expect(reason.contains("windows"), "\(reason)")
        }
    }

    @Test func identicalActionsShareAJobUnlessDoNotCache() async throws {
        try await withExecutionServer { server in
            let shared = try await server.storeAction(["echo", "same"])
            let first = try await server.startExecution(shared)
            let second = try await server.startExecution(shared)
            #expect(first.name != second.name)
            let uncached = try await server.storeAction(["echo", "again"], doNotCache: true)
            _ = try await server.startExecution(uncached)
            _ = try await server.startExecution(uncached)
            let session = try await server.createBot("bot", capacity: 10)
            // One lease for the shared action, two for the do-not-cache one.
            #expect(session.leases.count == 3)
        }
    }

    @Test func aCancelledOperationsLeaseIsSentCancelledAtOnce() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["sleep", "1000"])
            let operation = try await server.startExecution(digest)
            var session = try await server.createBot("bot")
            #expect(session.leases.count == 1)
            // The bot is busy: its update waits for a change, and the cancellation is one.
            let started = ContinuousClock.now
            let polling = Task { [session] in try await server.update(session, timeout: .seconds(60)) }
            try await Task.sleep(for: .milliseconds(200))
            _ = try await server.operations.cancelOperation(.with { $0.name = operation.name })
            session = try await polling.value
            #expect(ContinuousClock.now - started < .seconds(30), "the long-poll waited instead of answering the cancellation")
            #expect(session.leases.map(\.state) == [.cancelled])
            // The bot acknowledges: the lease goes away, and the operation completed CANCELLED.
            session = try await server.update(session, timeout: .seconds(1))
            #expect(session.leases.isEmpty)
            let got = try await server.operations.getOperation(.with { $0.name = operation.name })
            #expect(got.done)
            #expect(got.executeResponse?.status.code == Int32(StrataError.Code.cancelled.rawValue))
        }
    }

    @Test func aLongPollAnswersAsSoonAsAJobIsAssigned() async throws {
        try await withExecutionServer { server in
            let session = try await server.createBot("bot")
            #expect(session.leases.isEmpty)
            let started = ContinuousClock.now
            let polling = Task { try await server.update(session, timeout: .seconds(60)) }
            try await Task.sleep(for: .milliseconds(200))
            let digest = try await server.storeAction(["true"])
            _ = try await server.startExecution(digest)
            let updated = try await polling.value
            #expect(updated.leases.count == 1)
            // Generous: the long-poll would last 48 s (four fifths of the 60 s deadline) had it not answered.
            #expect(ContinuousClock.now - started < .seconds(30))
        }
    }

    /// A long-poll leaves the answer time to reach the bot: a fifth of a long window, a second of a
    /// short one, half of one under two seconds (a fifth of a second was missed on a loaded machine).
    @Test func aLongPollLeavesTimeForTheAnswer() {
        #expect(BotsService.longPollWait(in: .seconds(60)) == .seconds(48))
        #expect(BotsService.longPollWait(in: .seconds(3)) == .seconds(2))
        #expect(BotsService.longPollWait(in: .seconds(1)) == .milliseconds(500))
        #expect(BotsService.longPollWait(in: .zero) == .zero)
    }

    @Test func anExpiredSessionIsNotFound() async throws {
        var settings = SchedulerSettings()
        settings.botSessionKeepaliveTimeout = .milliseconds(300)
        settings.maintenanceInterval = .milliseconds(100)
        try await withExecutionServer(settings: settings) { server in
            let session = try await server.createBot("bot")
            try await Task.sleep(for: .seconds(2))
            let error = try #require(await rpcFailure { _ = try await server.update(session, timeout: .seconds(5)) })
            #expect(error.code == .notFound, "\(error)")
            let unknown = try #require(await rpcFailure {
                var other = session
                other.name = "main/bots/nonsense"
                _ = try await server.update(other, timeout: .seconds(5))
            })
            #expect(unknown.code == .notFound)
        }
    }

    @Test func doNotCacheResultsAndFailuresAreNotCached() async throws {
        try await withExecutionServer { server in
            let uncached = try await server.storeAction(["date"], doNotCache: true)
            _ = try await server.startExecution(uncached)
            var session = try await server.createBot("bot")
            #expect(session.leases.count == 1)
            session.leases = [try session.leases[0].completed(.with { $0.exitCode = 0 })]
            session = try await server.update(session, timeout: .seconds(1))
            #expect(try await server.cache.get(uncached) == nil)

            // A lease that failed (status not OK) completes the job with that status, uncached.
            let failing = try await server.storeAction(["false"])
            let operation = try await server.startExecution(failing)
            while session.leases.isEmpty { session = try await server.update(session, timeout: .seconds(5)) }
            var lease = session.leases[0]
            lease.state = .completed
            lease.status = StrataError(.internal, "the runner crashed").rpcStatus
            session.leases = [lease]
            session = try await server.update(session, timeout: .seconds(1))
            #expect(try await server.cache.get(failing) == nil)
            let finished = try await server.waitExecution(operation.name)
            #expect(finished.last?.executeResponse?.status.message == "the runner crashed")
            #expect(finished.allSatisfy { !$0.hasError })
        }
    }

    @Test func aBotMayReportAWholeExecuteResponse() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["true"])
            let operation = try await server.startExecution(digest)
            var session = try await server.createBot("bot")
            var lease = session.leases[0]
            lease.state = .completed
            lease.result = try Google_Protobuf_Any(message: ExecuteResponse.with {
                $0.result.exitCode = 3
                $0.message = "from the bot"
            })
            session.leases = [lease]
            _ = try await server.update(session, timeout: .seconds(1))
            let finished = try await server.waitExecution(operation.name)
            #expect(finished.last?.executeResponse?.result.exitCode == 3)
            #expect(finished.last?.executeResponse?.message == "from the bot")
        }
    }

    @Test func theStreamResendsTheOperationEveryKeepalive() async throws {
        try await withExecutionServer(options: ExecutionServiceOptions(operationStreamKeepalive: .milliseconds(200))) { server in
            let digest = try await server.storeAction(["true"])
            // Nobody runs it: every message after the first is a keepalive re-send.
            let operations = try await server.execute(server.executeRequest(digest)) { $0.count == 4 }
            #expect(operations.count == 4)
            #expect(Set(operations.map(\.name)).count == 1)
            #expect(operations.allSatisfy { $0.stage == .queued && !$0.done })
        }
    }

    @Test func waitExecutionOnAnUnknownNameIsNotFound() async throws {
        try await withExecutionServer { server in
            for name in ["main/operations/nonsense", "nonsense"] {
                let error = try #require(await rpcFailure { _ = try await server.waitExecution(name) })
                #expect(error.code == .notFound, "\(name): \(error)")
            }
        }
    }

    @Test func operationsListFilterCancelAndDelete() async throws {
        try await withExecutionServer(options: ExecutionServiceOptions(maxListOperationsPageSize: 10)) { server in
            let linux = try await server.storeAction(["a"], platform: [("OSFamily", "linux")])
            let plain = try await server.storeAction(["b"])
            let first = try await server.startExecution(linux)
            let second = try await server.startExecution(plain)

            let all = try await server.operations.listOperations(.with { $0.name = ExecutionServer.instance })
            #expect(Set(all.operations.map(\.name)) == [first.name, second.name])
            let filtered = try await server.operations.listOperations(.with {
                $0.name = ExecutionServer.instance
                $0.filter = "stage=QUEUED & platform=OSFamily:linux"
            })
            #expect(filtered.operations.map(\.name) == [first.name])
            let paged = try await server.operations.listOperations(.with { $0.name = ExecutionServer.instance; $0.pageSize = 1 })
            #expect(paged.operations.count == 1 && !paged.nextPageToken.isEmpty)

            let tooMany = try #require(await rpcFailure {
                _ = try await server.operations.listOperations(.with { $0.name = ExecutionServer.instance; $0.pageSize = 11 })
            })
            #expect(tooMany.code == .invalidArgument && tooMany.message.contains("max-list-operations-page-size"))
            let badFilter = try #require(await rpcFailure {
                _ = try await server.operations.listOperations(.with { $0.name = ExecutionServer.instance; $0.filter = "stage=SOON" })
            })
            #expect(badFilter.code == .invalidArgument && badFilter.message.contains("SOON"))

            _ = try await server.operations.cancelOperation(.with { $0.name = second.name })
            let cancelled = try await server.operations.getOperation(.with { $0.name = second.name })
            #expect(cancelled.done && cancelled.executeResponse?.status.code == Int32(StrataError.Code.cancelled.rawValue))
            let completed = try await server.operations.listOperations(.with {
                $0.name = ExecutionServer.instance
                $0.filter = "stage=COMPLETED"
            })
            #expect(completed.operations.map(\.name) == [second.name])

            _ = try await server.operations.deleteOperation(.with { $0.name = second.name })
            let gone = try #require(await rpcFailure { _ = try await server.operations.getOperation(.with { $0.name = second.name }) })
            #expect(gone.code == .notFound)
        }
    }

    @Test func capabilitiesAnnounceExecution() async throws {
        try await withExecutionServer { server in
            let capabilities = try await server.capabilities.getCapabilities(.with { $0.instanceName = ExecutionServer.instance })
            #expect(capabilities.executionCapabilities.execEnabled)
            #expect(capabilities.executionCapabilities.digestFunctions.contains(.sha256))
        }
    }

    /// A bot that sets a lease CANCELLED gives the job back: requeued (one attempt counted), not
    /// failed; the next bot to ask (here the same one, polling again) gets it.
    @Test func aLeaseTheBotCancelsItselfIsRequeuedNotFailed() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["true"])
            let operation = try await server.startExecution(digest)
            var session = try await server.createBot("first")
            #expect(session.leases.count == 1)
            let jobID = session.leases[0].id
            session.leases[0].state = .cancelled
            session = try await server.update(session, timeout: .seconds(1))
            #expect(session.leases.map(\.state) == [.active])
            #expect(session.leases.map(\.id) == [jobID])
            let got = try await server.operations.getOperation(.with { $0.name = operation.name })
            #expect(!got.done)
        }
    }

    /// A lease whose answer never reached the bot (it reports no such lease) is sent once more without
    /// costing the job an attempt; omitted a second time, the job goes back to the queue, which here
    /// (one attempt allowed) ends it ABORTED.
    @Test func aLeaseLostOnTheWayIsSentOnceMoreAtNoAttemptsCost() async throws {
        try await withOneAttemptJob { server, operation, session in
            var session = session
            let jobID = try #require(session.leases.first?.id)
            session.leases = []
            let started = ContinuousClock.now
            session = try await server.update(session, timeout: .seconds(60))
            #expect(ContinuousClock.now - started < .seconds(30), "the lease sent again waited out a long-poll")
            #expect(session.leases.map(\.id) == [jobID])
            #expect(session.leases.map(\.state) == [.active])
            let got = try await server.operations.getOperation(.with { $0.name = operation.name })
            #expect(!got.done && got.stage == .executing)

            session.leases = []
            _ = try await server.update(session, timeout: .seconds(1))
            try await Self.expectAborted(operation, server)
        }
    }

    /// The same, when the bot's next call reaches another bots process: what became of a lease is
    /// kept by the scheduler they share, not by the process that sent it.
    @Test func aLeaseLostOnTheWayIsSentAgainByAnotherBotsProcess() async throws {
        var oneAttempt = SchedulerSettings()
        oneAttempt.maxJobAttempts = 1
        let settings = oneAttempt
        let scheduler = InMemoryScheduler(settings: settings)
        let store = LRUBlobStore(capacityBytes: 64 << 20)
        try await withExecutionServer(settings: settings, scheduler: scheduler, store: store) { first in
            try await withExecutionServer(settings: settings, scheduler: scheduler, store: store) { second in
                let operation = try await first.startExecution(try await first.storeAction(["true"]))
                var session = try await first.createBot("bot")
                let jobID = try #require(session.leases.first?.id)
                session.leases = []
                session = try await second.update(session, timeout: .seconds(60))
                #expect(session.leases.map(\.id) == [jobID])
                let got = try await first.operations.getOperation(.with { $0.name = operation.name })
                #expect(!got.done && got.stage == .executing)
                // Reported through the second process, dropped through the first: given back.
                session = try await second.update(session, timeout: .seconds(2))
                session.leases = []
                _ = try await first.update(session, timeout: .seconds(2))
                try await Self.expectAborted(operation, first)
            }
        }
    }

    /// A lease the bot has reported once is its own: dropping it later gives the job back at once.
    @Test func aLeaseTheBotReportedAndThenDropsIsRequeued() async throws {
        try await withOneAttemptJob { server, operation, session in
            var session = try await server.update(session, timeout: .seconds(2))  // long-polls: 1 s, with 1 s for the answer
            #expect(session.leases.count == 1)
            session.leases = []
            _ = try await server.update(session, timeout: .seconds(1))
            try await Self.expectAborted(operation, server)
        }
    }

    /// A server allowing each job one attempt, with one job assigned to the bot session given.
    private func withOneAttemptJob(
        _ body: @Sendable (ExecutionServer, Google_Longrunning_Operation, BotSession) async throws -> Void
    ) async throws {
        var settings = SchedulerSettings()
        settings.maxJobAttempts = 1
        try await withExecutionServer(settings: settings) { server in
            let operation = try await server.startExecution(try await server.storeAction(["true"]))
            let session = try await server.createBot("bot")
            #expect(session.leases.count == 1)
            try await body(server, operation, session)
        }
    }

    private static func expectAborted(_ operation: Google_Longrunning_Operation, _ server: ExecutionServer) async throws {
        let got = try await server.operations.getOperation(.with { $0.name = operation.name })
        #expect(got.done)
        #expect(got.executeResponse?.status.code == Int32(StrataError.Code.aborted.rawValue))
    }

    @Test func badBotSessionsAreRefused() async throws {
        try await withExecutionServer { server in
            let noID = try #require(await rpcFailure { _ = try await server.createBot("") })
            #expect(noID.code == .invalidArgument && noID.message.contains("bot_id"))
            let zero = try #require(await rpcFailure { _ = try await server.createBot("bot", capacity: 0) })
            #expect(zero.code == .invalidArgument && zero.message.contains("capacity"))
            let unknownInstance = try #require(await rpcFailure {
                _ = try await server.bots.createBotSession(.with {
                    $0.parent = "elsewhere"
                    $0.botSession.botID = "bot"
                })
            })
            #expect(unknownInstance.code == .invalidArgument && unknownInstance.message.contains("elsewhere"))
            // A result that is neither an ActionResult nor an ExecuteResponse fails the job, saying so.
            let digest = try await server.storeAction(["true"])
            let operation = try await server.startExecution(digest)
            var session = try await server.createBot("bot")
            var lease = session.leases[0]
            lease.state = .completed
            lease.result = try Google_Protobuf_Any(message: Google_Protobuf_StringValue("done"))
            session.leases = [lease]
            _ = try await server.update(session, timeout: .seconds(1))
            let finished = try await server.waitExecution(operation.name)
            let status = try #require(finished.last?.executeResponse?.status)
            #expect(status.code == Int32(StrataError.Code.internal.rawValue) && status.message.contains("StringValue"), "\(status)")
            #expect(try await server.cache.get(digest) == nil)
        }
    }

    @Test func aTerminatingBotsJobsGoBackToTheQueue() async throws {
        try await withExecutionServer { server in
            let digest = try await server.storeAction(["true"])
            let operation = try await server.startExecution(digest)
            var session = try await server.createBot("bot")
            #expect(session.leases.count == 1)
            session.status = .botTerminating
            _ = try await server.update(session, timeout: .seconds(1))
            let got = try await server.operations.getOperation(.with { $0.name = operation.name })
            #expect(got.stage == .queued)
            // Another bot takes it.
            let other = try await server.createBot("other")
            #expect(other.leases.count == 1)
        }
    }
}
