import Synchronization

/// The deadline of the request being served: the instant the client stops waiting (its
/// `grpc-timeout`), set for the whole RPC by the server's deadline interceptor.
///
/// Backend clients read it to bound what they do for the request: a call to S3, PostgreSQL, Redis or
/// another REAPI server is not worth continuing once the client has given up, and a retry that cannot
/// finish in time is not started. When the client set no deadline, each backend falls back on its own
/// bounds (a no-progress timeout, a retry budget), so a hung backend still answers within seconds.
///
/// Work a request starts that outlives it (a deferred write to a slower tier, a replica's repair, an
/// upload resumed by a later call) inherits the task-local but not the bound: once the request is
/// over, its deadline no longer applies.
public enum RequestDeadline {
    /// One request's deadline, in force until the request is over.
    public final class Scope: Sendable {
        public let deadline: ContinuousClock.Instant
        private let over = Atomic<Bool>(false)

        public init(deadline: ContinuousClock.Instant) { self.deadline = deadline }

        /// The request is over: work it started and that goes on is no longer bounded by its deadline.
        public func end() { over.store(true, ordering: .releasing) }

        var isInForce: Bool { !over.load(ordering: .acquiring) }
    }

    @TaskLocal static var scope: Scope?

    /// The deadline of the request this task works for, while that request is not over; nil when
    /// the client set none.
    public static var current: ContinuousClock.Instant? {
        guard let scope, scope.isInForce else { return nil }
        return scope.deadline
    }

    /// Runs `body` (and the tasks it starts) under `scope`; the caller ends the scope.
    public static func within<Value>(_ scope: Scope, _ body: () async throws -> Value) async rethrows -> Value {
        try await $scope.withValue(scope, operation: body)
    }

    /// Runs `body` as a request whose client stops waiting at `deadline`.
    public static func withDeadline<Value>(
        _ deadline: ContinuousClock.Instant, _ body: () async throws -> Value
    ) async rethrows -> Value {
        let scope = Scope(deadline: deadline)
        defer { scope.end() }
        return try await within(scope, body)
    }

    /// Time left until the client's deadline (zero once it passed); nil when the client set none.
    public static var remaining: Duration? {
        current.map { max(.zero, $0 - ContinuousClock.now) }
    }

    /// `limit`, shortened to the time left until the client's deadline.
    public static func bounded(_ limit: Duration) -> Duration {
        guard let remaining else { return limit }
        return min(limit, remaining)
    }

    /// `limit` (nil: unbounded), shortened to the time left until the client's deadline.
    public static func bounded(optional limit: Duration?) -> Duration? {
        guard let remaining else { return limit }
        return limit.map { min($0, remaining) } ?? remaining
    }

    /// The duration a `grpc-timeout` header value gives: at most 8 digits and a unit (H, M, S, m, u,
    /// n), as the gRPC HTTP/2 protocol defines it. Nil for anything else: a malformed header is
    /// ignored rather than failing the request.
    public static func parseGRPCTimeout(_ text: String) -> Duration? {
        let utf8 = Array(text.utf8)
        guard (2...9).contains(utf8.count), let unit = utf8.last else { return nil }
        var amount: Int64 = 0
        for byte in utf8.dropLast() {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            amount = amount * 10 + Int64(byte - UInt8(ascii: "0"))
        }
        switch unit {
        case UInt8(ascii: "H"): return .seconds(amount * 3600)
        case UInt8(ascii: "M"): return .seconds(amount * 60)
        case UInt8(ascii: "S"): return .seconds(amount)
        case UInt8(ascii: "m"): return .milliseconds(amount)
        case UInt8(ascii: "u"): return .microseconds(amount)
        case UInt8(ascii: "n"): return .nanoseconds(amount)
        default: return nil
        }
    }
}

/// How a backend call is retried: the one retry loop of every backend client (S3, Redis, a remote
/// REAPI server, the SQL index's removals).
///
/// Attempt `n + 1` follows a random pause in `0...min(maxDelay, baseDelay * 2^(n-1))` ("full jitter",
/// so clients that failed together do not retry together). No attempt starts after the request's
/// deadline (`RequestDeadline`), nor, when the client set none, later than `budget` after the first
/// began: a backend that keeps failing costs its caller a bounded time, not attempts × timeouts.
public struct RetryPolicy: Sendable, Equatable {
    /// Attempts in all, the first included.
    public var maxAttempts: Int
    public var baseDelay: Duration
    public var maxDelay: Duration
    /// The longest time from the first attempt to the start of the last one, without a client deadline.
    public var budget: Duration

    public init(maxAttempts: Int, baseDelay: Duration, maxDelay: Duration, budget: Duration) {
        self.maxAttempts = max(1, maxAttempts)
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.budget = budget
    }

    /// Runs `attempt` (given its number, from 1) until it succeeds, throws an error `isTransient`
    /// rejects, or the attempts, the budget or the request's deadline run out; then rethrows its last
    /// error. Cancellation ends the pause at once.
    public func run<Value>(
        isTransient: (any Error) -> Bool, _ attempt: (Int) async throws -> Value
    ) async throws -> Value {
        let start = ContinuousClock.now
        var latestStart = start + budget
        if let deadline = RequestDeadline.current { latestStart = min(latestStart, deadline) }
        var number = 1
        while true {
            do {
                return try await attempt(number)
            } catch {
                guard isTransient(error), number < maxAttempts else { throw error }
                let pause = self.pause(before: number + 1)
                guard ContinuousClock.now + pause < latestStart else { throw error }
                try await Task.sleep(for: pause)
                number += 1
            }
        }
    }

    /// The random pause before attempt `number` (from 2).
    func pause(before number: Int) -> Duration {
        let ceiling = min(maxDelay, baseDelay * (1 << min(max(number - 2, 0), 20)))
        let nanoseconds = max(Int64(0), Int64(ceiling.timeInterval * 1e9))
        return .nanoseconds(Int64.random(in: 0...nanoseconds))
    }
}
