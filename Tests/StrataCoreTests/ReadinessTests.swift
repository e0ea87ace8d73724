import Dispatch
import StrataCore
import Testing

/// A backend answering as the test says: at once, with an error, or never (a call blocked without
/// regard for its deadline).
struct ScriptedBackend: ReadinessCheckable {
    enum Behaviour: Sendable { case answers, fails(String), hangs }
    let behaviour: Behaviour

    func checkReadiness() async throws {
        switch behaviour {
        case .answers: return
        case .fails(let why): throw StrataError.unavailable(why)
        case .hangs:
            // Ignores cancellation, as a blocked system call would (without holding one of the few
            // cooperative threads).
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + 60) { continuation.resume() }
            }
        }
    }
}

@Suite struct ReadinessTests {
    /// Every backend is reported, in the configuration's order, with its name, location and why it is
    /// not ready; one that never answers is reported after the timeout, without waiting for it.
    @Test func reportsEachBackendWithinTheTimeout() async {
        let readiness = Readiness(backends: [
            .init(backend: ScriptedBackend(behaviour: .answers), name: "!disk-storage /a", location: "a.yml:3: storages[0]"),
            .init(backend: ScriptedBackend(behaviour: .fails("Redis at 127.0.0.1:1 is unavailable")),
                  name: "!redis-connection 127.0.0.1:1", location: "a.yml:9: connections[0]"),
            .init(backend: ScriptedBackend(behaviour: .hangs), name: "!s3-storage bucket b", location: "a.yml:12: storages[1]"),
        ], timeout: .milliseconds(200))
        let start = ContinuousClock.now
        let results = await readiness.check()
        #expect(ContinuousClock.now - start < .seconds(30), "waited for the hung backend")
        #expect(results.map(\.name) == ["!disk-storage /a", "!redis-connection 127.0.0.1:1", "!s3-storage bucket b"])
        #expect(results.map(\.location) == ["a.yml:3: storages[0]", "a.yml:9: connections[0]", "a.yml:12: storages[1]"])
        #expect(results[0].isReady)
        #expect(results[1].problem == "Redis at 127.0.0.1:1 is unavailable")
        #expect(results[2].problem?.hasPrefix("no answer within") == true, "\(results[2].problem ?? "ready")")
        #expect(await !readiness.isReady())
    }

    /// The backend's calls see the readiness deadline (`RequestDeadline`), so their own retries and
    /// timeouts stop at it.
    @Test func backendsSeeTheDeadline() async throws {
        struct DeadlineReader: ReadinessCheckable {
            func checkReadiness() async throws {
                let remaining = try #require(RequestDeadline.remaining)
                guard remaining <= .seconds(2) else { throw StrataError.internal("no readiness deadline: \(remaining)") }
            }
        }
        let results = await Readiness(backends: [.init(backend: DeadlineReader(), name: "n", location: "l")]).check()
        #expect(results.map(\.problem) == [nil])
        #expect(await Readiness().isReady(), "nothing to ask is ready")
    }
}
