import StrataCore
import Synchronization
import Testing

@Suite struct RequestDeadlineTests {
    @Test func grpcTimeoutHeaders() {
        #expect(RequestDeadline.parseGRPCTimeout("2S") == .seconds(2))
        #expect(RequestDeadline.parseGRPCTimeout("1500m") == .milliseconds(1500))
        #expect(RequestDeadline.parseGRPCTimeout("3M") == .seconds(180))
        #expect(RequestDeadline.parseGRPCTimeout("1H") == .seconds(3600))
        #expect(RequestDeadline.parseGRPCTimeout("99999999u") == .microseconds(99_999_999))
        #expect(RequestDeadline.parseGRPCTimeout("7n") == .nanoseconds(7))
        for malformed in ["", "S", "2", "2s", "-2S", "123456789S", "2 S", "2.5S"] {
            #expect(RequestDeadline.parseGRPCTimeout(malformed) == nil, "\(malformed) was accepted")
        }
    }

    @Test func boundsByTheTimeLeft() async {
        #expect(RequestDeadline.remaining == nil)
        #expect(RequestDeadline.bounded(.seconds(5)) == .seconds(5))
        #expect(RequestDeadline.bounded(optional: nil) == nil)
        await RequestDeadline.withDeadline(.now + .seconds(2)) {
            #expect(RequestDeadline.bounded(.seconds(5)) <= .seconds(2))
            #expect(RequestDeadline.bounded(.seconds(1)) == .seconds(1))
            #expect(RequestDeadline.bounded(optional: nil).map { $0 <= .seconds(2) && $0 > .zero } == true)
            // Child tasks inherit it.
            let inherited = await Task { RequestDeadline.remaining != nil }.value
            #expect(inherited)
        }
        await RequestDeadline.withDeadline(.now - .seconds(1)) {
            #expect(RequestDeadline.remaining == .zero)
        }
    }

    /// A task the request starts and that goes on after it (a deferred write, a repair) inherits the
    /// task-local but is not bounded by a deadline whose client is gone.
    @Test func workThatOutlivesTheRequestIsNotBoundByIt() async {
        let (gate, open) = AsyncStream<Void>.makeStream()
        let background = await RequestDeadline.withDeadline(.now + .seconds(60)) {
            #expect(RequestDeadline.current != nil)
            return Task { () -> ContinuousClock.Instant? in
                for await _ in gate { break }
                return RequestDeadline.current
            }
        }
        open.yield()
        #expect(await background.value == nil)
    }

    struct Transient: Error {}
    struct Permanent: Error {}

    /// Counts attempts; fails with `error` each time.
    func attempts(_ policy: RetryPolicy, failingWith error: any Error) async -> Int {
        let count = Mutex(0)
        _ = try? await policy.run(isTransient: { $0 is Transient }) { _ in
            count.withLock { $0 += 1 }
            throw error
        }
        return count.withLock { $0 }
    }

    @Test func retriesOnlyTransientFailuresUpToTheAttempts() async {
        let policy = RetryPolicy(maxAttempts: 4, baseDelay: .milliseconds(1), maxDelay: .milliseconds(2), budget: .seconds(60))
        #expect(await attempts(policy, failingWith: Transient()) == 4)
        #expect(await attempts(policy, failingWith: Permanent()) == 1)
        let answer = try? await policy.run(isTransient: { _ in true }) { attempt in
            if attempt < 3 { throw Transient() }
            return attempt
        }
        #expect(answer == 3)
    }

    /// No retry starts past the budget, nor past the client's deadline: a backend that keeps failing
    /// costs a bounded time, not attempts × timeouts.
    @Test func noRetryPastTheBudgetOrTheDeadline() async {
        // Pauses of up to 10 s would be needed; a zero budget allows none.
        let slow = RetryPolicy(maxAttempts: 10, baseDelay: .seconds(10), maxDelay: .seconds(10), budget: .zero)
        #expect(await attempts(slow, failingWith: Transient()) == 1)
        let generous = RetryPolicy(maxAttempts: 10, baseDelay: .seconds(10), maxDelay: .seconds(10), budget: .seconds(3600))
        let start = ContinuousClock.now
        let count = await RequestDeadline.withDeadline(.now) { await attempts(generous, failingWith: Transient()) }
        #expect(count == 1)
        #expect(ContinuousClock.now - start < .seconds(10), "a retry past the deadline was slept for")
    }
}
