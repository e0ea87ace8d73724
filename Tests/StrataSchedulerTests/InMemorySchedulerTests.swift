import Foundation
import StrataCore
@testable import StrataScheduler
import StrataTestSupport
import Synchronization
import Testing

@Suite struct InMemorySchedulerTests {
    @Test(arguments: SchedulerConformance.cases)
    func conformance(_ check: SchedulerConformance) async throws {
        try await check.run { settings in InMemoryScheduler(settings: settings) }
    }

    static func scheduler(_ configure: (inout SchedulerSettings) -> Void = { _ in }) -> InMemoryScheduler {
        var settings = SchedulerConformance.baseSettings
        configure(&settings)
        return InMemoryScheduler(settings: settings)
    }

    static func eventually(_ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while !condition() {
            guard ContinuousClock.now < deadline else { throw ConformanceFailure("\(what) did not happen within 20 s") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test func cancelledWatchReleasesItsStream() async throws {
        let scheduler = Self.scheduler()
        let queued = try await scheduler.queue(SchedulerConformance.request())
        let stream = try await scheduler.watch(queued.name)
        #expect(scheduler.openWatchStreamCount == 1)
        let reader = Task {
            var seen = 0
            do { for try await _ in stream { seen += 1 } } catch {}
            return seen
        }
        try await Self.eventually("the reader's first snapshot") { scheduler.openWatchStreamCount == 1 }
        reader.cancel()
        _ = await reader.value
        try await Self.eventually("releasing a cancelled watch") { scheduler.openWatchStreamCount == 0 }
        // A stream dropped unread releases its registration too.
        do { _ = try await scheduler.watch(queued.name) }
        try await Self.eventually("releasing a dropped watch") { scheduler.openWatchStreamCount == 0 }
        // And one that ends with its operation's completion.
        let completing = try await scheduler.watch(queued.name)
        #expect(scheduler.openWatchStreamCount == 1)
        try await scheduler.cancelOperation(queued.name)
        #expect(scheduler.openWatchStreamCount == 0)
        var stages: [JobStage] = []
        for try await snapshot in completing { stages.append(snapshot.stage) }
        #expect(stages == [.queued, .completed])
    }

    @Test func cancelledLongPollsReleaseTheirContinuations() async throws {
        let scheduler = Self.scheduler()
        let session = try await scheduler.createBotSession(SchedulerConformance.bot(capacity: 2))
        let deadline = ContinuousClock.now + .seconds(120)
        let assigning = Task { try await scheduler.assignJobs(session: session.name, count: 1, deadline: deadline) }
        let waiting = Task { try await scheduler.waitForChange(session: session.name, deadline: deadline) }
        try await Self.eventually("both long-polls parked") { scheduler.parkedWaiterCount == 2 }
        assigning.cancel()
        waiting.cancel()
        #expect(try await assigning.value.isEmpty)
        try await waiting.value
        #expect(ContinuousClock.now < deadline - .seconds(60), "a cancelled long-poll waited for its deadline")
        #expect(scheduler.parkedWaiterCount == 0)
        // An already cancelled task does not park at all.
        let cancelledFirst = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await scheduler.assignJobs(session: session.name, count: 1, deadline: deadline)
        }
        #expect(try await cancelledFirst.value.isEmpty)
        #expect(scheduler.parkedWaiterCount == 0)
    }

    @Test func longPollsEndingAtTheirDeadlineLeaveNoWaiter() async throws {
        let scheduler = Self.scheduler()
        let session = try await scheduler.createBotSession(SchedulerConformance.bot())
        for _ in 0..<20 {
            _ = try await scheduler.assignJobs(session: session.name, count: 1, deadline: .now + .milliseconds(10))
            try await scheduler.waitForChange(session: session.name, deadline: .now + .milliseconds(10))
        }
        #expect(scheduler.parkedWaiterCount == 0)
    }

    @Test func closingASessionWakesItsLongPolls() async throws {
        let scheduler = Self.scheduler()
        let session = try await scheduler.createBotSession(SchedulerConformance.bot())
        let deadline = ContinuousClock.now + .seconds(120)
        let assigning = Task { try await scheduler.assignJobs(session: session.name, count: 1, deadline: deadline) }
        try await Self.eventually("the long-poll parked") { scheduler.parkedWaiterCount == 1 }
        try await scheduler.closeBotSession(session.name, reason: "test")
        await #expect(throws: StrataError.self) { try await assigning.value }
        #expect(scheduler.parkedWaiterCount == 0)
    }

    @Test func completedJobsArePrunedAfterTheirRetention() async throws {
        let scheduler = Self.scheduler { $0.completedJobRetention = .seconds(60) }
        let session = try await scheduler.createBotSession(SchedulerConformance.bot())
        let done = try await scheduler.queue(SchedulerConformance.request())
        let job = try await scheduler.assignJobs(session: session.name, count: 1, deadline: .now + .seconds(5))
        try await scheduler.completeJob(job[0].jobID, session: session.name, response: SchedulerConformance.response("done"))
        let cached = try await scheduler.recordCachedResult(SchedulerConformance.request(), result: .init())
        let pending = try await scheduler.queue(SchedulerConformance.request())
        scheduler.maintain(now: .now)
        #expect(scheduler.heldCounts == (jobs: 3, operations: 3))
        // The session is renewed past the test's jump in time, so only retention is tested.
        _ = try await scheduler.renewBotSession(session.name, status: .ok)
        scheduler.maintain(now: .now + .seconds(61))
        #expect(scheduler.heldCounts == (jobs: 1, operations: 1))
        await #expect(throws: StrataError.self) { _ = try await scheduler.operation(done.name) }
        await #expect(throws: StrataError.self) { _ = try await scheduler.operation(cached.name) }
        #expect(try await scheduler.operation(pending.name).stage == .queued)
    }

    /// Many bots polling while jobs arrive concurrently: each job goes to exactly one bot.
    @Test func concurrentBotsTakeEachJobOnce() async throws {
        let scheduler = Self.scheduler()
        let jobCount = 200
        var sessions: [String] = []
        for index in 0..<8 { sessions.append(try await scheduler.createBotSession(SchedulerConformance.bot("bot-\(index)", capacity: 100)).name) }
        let taken = TakenJobs()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for session in sessions {
                group.addTask {
                    let deadline = ContinuousClock.now + .seconds(30)
                    while taken.ids.withLock({ $0.count }) < jobCount && ContinuousClock.now < deadline {
                        let jobs = try await scheduler.assignJobs(session: session, count: 3, deadline: min(deadline, .now + .milliseconds(200)))
                        for job in jobs {
                            try await scheduler.completeJob(job.jobID, session: session, response: SchedulerConformance.response("ok"))
                        }
                        taken.ids.withLock { $0 += jobs.map(\.jobID) }
                    }
                }
            }
            group.addTask {
                for _ in 0..<jobCount { _ = try await scheduler.queue(SchedulerConformance.request()) }
            }
            try await group.waitForAll()
        }
        let ids = taken.ids.withLock { $0 }
        #expect(ids.count == jobCount)
        #expect(Set(ids).count == ids.count, "a job was assigned twice")
        #expect(try await scheduler.statistics().jobsByStage[.completed] == jobCount)
        #expect(scheduler.parkedWaiterCount == 0)
    }
}

final class TakenJobs: Sendable {
    let ids = Mutex<[String]>([])
}

@Suite struct PropertySetTests {
    static func property(_ name: String, _ value: String) -> PlatformProperty { PlatformProperty(name: name, value: value) }

    static func failure(_ body: () throws(StrataError) -> Void) -> StrataError? {
        do throws(StrataError) {
            try body()
            return nil
        } catch {
            return error
        }
    }

    @Test func dynamicAlwaysMatchesOSFamilyAndISA() throws {
        let set = PropertySet.dynamic(DynamicPropertySet())
        let job = [Self.property("ISA", "x86-64"), Self.property("OSFamily", "linux")]
        try set.validate(job)
        #expect(set.matches(job: job, bot: job + [Self.property("pool", "any")]))
        #expect(!set.matches(job: job, bot: [Self.property("OSFamily", "linux")]), "a bot without the job's ISA matched")
        #expect(!set.matches(job: job, bot: [Self.property("ISA", "x86-64"), Self.property("OSFamily", "windows")]))
        #expect(set.matches(job: [], bot: job), "an empty platform did not match every bot")
    }

    @Test func dynamicMatchedKeys() throws {
        let set = PropertySet.dynamic(DynamicPropertySet(matchPropertyKeys: ["pool"]))
        try set.validate([Self.property("pool", "big")])
        #expect(set.matches(job: [Self.property("pool", "big")], bot: [Self.property("pool", "big")]))
        #expect(!set.matches(job: [Self.property("pool", "big")], bot: [Self.property("pool", "small")]))
    }

    @Test func dynamicWildcardKeysAreAcceptedButNotMatched() throws {
        let set = PropertySet.dynamic(DynamicPropertySet(wildcardPropertyKeys: ["label"]))
        let job = [Self.property("OSFamily", "linux"), Self.property("label", "gpu-tests")]
        try set.validate(job)
        #expect(set.matches(job: job, bot: [Self.property("OSFamily", "linux")]))
    }

    @Test func dynamicUnknownKeyIsFailedPreconditionNamingIt() {
        let set = PropertySet.dynamic(DynamicPropertySet(matchPropertyKeys: ["pool"], wildcardPropertyKeys: ["label"]))
        let error = Self.failure { () throws(StrataError) in
            try set.validate([Self.property("OSFamily", "linux"), Self.property("colour", "red")])
        }
        #expect(error?.code == .failedPrecondition)
        #expect(error?.message.contains("\"colour\"") == true, "the message does not name the property: \(error?.message ?? "")")
        #expect(error?.message.contains("pool") == true, "the message does not say which keys are allowed")
    }

    static let staticSet = PropertySet.static(StaticPropertySet(
        propertyLabels: [
            (label: "linux", properties: [property("OSFamily", "linux"), property("ISA", "x86-64")]),
            (label: "windows", properties: [property("OSFamily", "windows")]),
        ],
        wildcardPropertyKeys: ["label"]))

    @Test func staticAcceptsASubsetOfOneLabelledSet() throws {
        try Self.staticSet.validate([Self.property("OSFamily", "linux")])
        try Self.staticSet.validate([Self.property("ISA", "x86-64"), Self.property("OSFamily", "linux")])
        try Self.staticSet.validate([Self.property("OSFamily", "windows"), Self.property("label", "x")])
        try Self.staticSet.validate([])
    }

    @Test func staticRefusesPropertiesOfTwoSets() {
        let error = Self.failure { () throws(StrataError) in
            try Self.staticSet.validate([Self.property("ISA", "x86-64"), Self.property("OSFamily", "windows")])
        }
        #expect(error?.code == .failedPrecondition)
        #expect(error?.message.contains("OSFamily=windows") == true, "the message does not name the platform: \(error?.message ?? "")")
    }

    @Test func staticUnknownPropertyIsNamed() {
        let error = Self.failure { () throws(StrataError) in
            try Self.staticSet.validate([Self.property("OSFamily", "macos")])
        }
        #expect(error?.code == .failedPrecondition)
        #expect(error?.message.contains("OSFamily=macos") == true, "the message does not name the property: \(error?.message ?? "")")
    }

    @Test func staticMatchesBotsOfferingTheJobsProperties() {
        let job = [Self.property("OSFamily", "linux"), Self.property("label", "x")]
        #expect(Self.staticSet.matches(job: job, bot: [Self.property("ISA", "x86-64"), Self.property("OSFamily", "linux")]))
        #expect(!Self.staticSet.matches(job: job, bot: [Self.property("OSFamily", "windows")]))
    }
}

@Suite struct OperationPredicateTests {
    static let queuedAt = Date(timeIntervalSince1970: 1_780_000_000.25)

    static let operation: OperationSnapshot = {
        var metadata = ClientRequestMetadata()
        metadata.toolName = "bazel"
        metadata.toolInvocationID = "inv-1"
        metadata.correlatedInvocationsID = "corr-1"
        return OperationSnapshot(
            name: "operations/abc", instanceName: "", jobID: "job", actionDigest: Blob(Data("action".utf8)).digest, stage: .executing,
            queuedAt: queuedAt, platform: [PlatformProperty(name: "OSFamily", value: "linux")], requestMetadata: metadata)
    }()

    static func holds(_ field: OperationPredicate.Field, _ comparison: OperationPredicate.Comparison, _ value: String) -> Bool {
        OperationPredicate(field: field, comparison: comparison, value: value).matches(operation)
    }

    @Test func stage() {
        #expect(Self.holds(.stage, .equal, "EXECUTING"))
        #expect(Self.holds(.stage, .equal, "executing"), "stage names are case-insensitive, as BuildGrid's")
        #expect(!Self.holds(.stage, .equal, "QUEUED"))
        #expect(Self.holds(.stage, .notEqual, "COMPLETED"))
        #expect(Self.holds(.stage, .greater, "QUEUED"))
        #expect(Self.holds(.stage, .less, "COMPLETED"))
        #expect(Self.holds(.stage, .greater, "CACHE_CHECK"), "CACHE_CHECK comes before every stage a job has")
        #expect(Self.holds(.stage, .greaterOrEqual, "UNKNOWN"))
        #expect(!Self.holds(.stage, .equal, "RUNNING"), "an unknown stage matched")
    }

    @Test func platform() {
        #expect(Self.holds(.platform, .equal, "OSFamily:linux"))
        #expect(!Self.holds(.platform, .equal, "OSFamily:windows"))
        #expect(Self.holds(.platform, .notEqual, "OSFamily:windows"))
        #expect(!Self.holds(.platform, .notEqual, "OSFamily:linux"))
        #expect(!Self.holds(.platform, .equal, "OSFamily"), "a value without a colon matched")
    }

    @Test func metadataAndNames() {
        #expect(Self.holds(.toolName, .equal, "bazel"))
        #expect(!Self.holds(.toolName, .equal, "bgd"))
        #expect(Self.holds(.invocationID, .equal, "inv-1"))
        #expect(Self.holds(.correlatedInvocationsID, .notEqual, "corr-2"))
        #expect(Self.holds(.name, .equal, "operations/abc"))
        #expect(Self.holds(.name, .greater, "operations/aaa"))
        let digest = Self.operation.actionDigest
        #expect(Self.holds(.actionDigest, .equal, "\(digest.hash)/\(digest.sizeBytes)"))
        #expect(!Self.holds(.actionDigest, .equal, "\(digest.hash)/\(digest.sizeBytes + 1)"))
    }

    @Test func queuedTimeAcceptsBuildGridsISO8601Forms() {
        // 1_780_000_000 s is 2026-05-28T20:26:40Z.
        #expect(Self.holds(.queuedTime, .greater, "2026-05-28T20:26:40Z"))
        #expect(Self.holds(.queuedTime, .greater, "2026-05-28T20:26:40"), "a time without a zone is UTC, as BuildGrid reads it")
        #expect(Self.holds(.queuedTime, .less, "2026-05-28T20:26:40.5Z"), "fractional seconds were not read")
        #expect(Self.holds(.queuedTime, .less, "2026-05-28T22:26:41+02:00"))
        #expect(Self.holds(.queuedTime, .greaterOrEqual, "2026-05-28"))
        #expect(!Self.holds(.queuedTime, .less, "2026-05-28"))
        #expect(OperationPredicate.parseTime("yesterday") == nil)
        #expect(!Self.holds(.queuedTime, .less, "yesterday"), "an unreadable time matched")
    }
}
