import Synchronization

/// A backend that can say, cheaply, whether it answers now: Redis (PING), PostgreSQL (SELECT 1), S3
/// (HEAD of its bucket), a disk folder (it exists and is writable), another REAPI server
/// (GetCapabilities). What `/readyz` and the gRPC health service ask.
///
/// Storages that only compose others (sharded, replicated, with-cache, size-differentiated, indexes)
/// have nothing of their own to ask: the configuration registers each backend below them instead.
public protocol ReadinessCheckable: Sendable {
    /// Returns when the backend answered as expected; throws saying why not. Bounded by
    /// `RequestDeadline` (the aggregator sets one), as every backend call is.
    func checkReadiness() async throws
}

/// Every configured backend that can be asked whether it answers, each with where it is configured,
/// asked all at once within `timeout`.
public struct Readiness: Sendable {
    public struct Backend: Sendable {
        public let backend: any ReadinessCheckable
        /// What it is, e.g. `!redis-connection redis:6379`.
        public let name: String
        /// Where it is configured: `FILE:LINE: PATH`.
        public let location: String

        public init(backend: any ReadinessCheckable, name: String, location: String) {
            self.backend = backend
            self.name = name
            self.location = location
        }
    }

    /// One backend's answer.
    public struct Result: Sendable, Equatable {
        public let name: String
        public let location: String
        /// Nil when it answered; else why it is not ready.
        public let problem: String?

        public init(name: String, location: String, problem: String?) {
            self.name = name
            self.location = location
            self.problem = problem
        }

        public var isReady: Bool { problem == nil }
    }

    public var backends: [Backend]
    /// How long a backend has to answer: a probe must answer quickly, whatever the backends' own
    /// (longer) timeouts and retry budgets are.
    public var timeout: Duration

    public static let defaultTimeout: Duration = .seconds(2)

    public init(backends: [Backend] = [], timeout: Duration = Readiness.defaultTimeout) {
        self.backends = backends
        self.timeout = timeout
    }

    /// Asks every backend at once; the results are in `backends`' order. A backend that has not
    /// answered within `timeout` is reported as such even if its call does not return.
    public func check() async -> [Result] {
        await withTaskGroup(of: (Int, String?).self) { group in
            for (index, entry) in backends.enumerated() {
                group.addTask { (index, await Self.problem(of: entry.backend, within: timeout)) }
            }
            var problems = [String?](repeating: nil, count: backends.count)
            for await (index, problem) in group { problems[index] = problem }
            return backends.enumerated().map { index, entry in
                Result(name: entry.name, location: entry.location, problem: problems[index])
            }
        }
    }

    /// Whether every backend answers.
    public func isReady() async -> Bool { await check().allSatisfy(\.isReady) }

    /// Nil when `backend` answered within `timeout`, else why not.
    static func problem(of backend: any ReadinessCheckable, within timeout: Duration) async -> String? {
        let answer = AnswerOnce()
        // The backend's call is bounded by the deadline; the timer answers for one that ignores it
        // (a blocked system call), whose call is left to finish on its own.
        let deadline = ContinuousClock.now + timeout
        let check = Task {
            do {
                try await RequestDeadline.withDeadline(deadline) { try await backend.checkReadiness() }
                answer.give(nil)
            } catch let error as StrataError {
                answer.give(error.message)
            } catch {
                answer.give("\(error)")
            }
        }
        let timer = Task {
            guard (try? await Task.sleep(until: deadline + .milliseconds(100))) != nil else { return }
            answer.give("no answer within \(timeout)")
        }
        let problem = await answer.value
        timer.cancel()
        check.cancel()
        return problem
    }
}

/// The first of several answers, awaited once.
private final class AnswerOnce: Sendable {
    private let state = Mutex<(answer: String??, waiter: CheckedContinuation<String?, Never>?)>((nil, nil))

    func give(_ problem: String?) {
        let waiter: CheckedContinuation<String?, Never>? = state.withLock { state in
            guard state.answer == nil else { return nil }
            state.answer = .some(problem)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: problem)
    }

    var value: String? {
        get async {
            await withCheckedContinuation { continuation in
                let answered: String?? = state.withLock { state in
                    if let answer = state.answer { return answer }
                    state.waiter = continuation
                    return nil
                }
                if let answered { continuation.resume(returning: answered) }
            }
        }
    }
}
