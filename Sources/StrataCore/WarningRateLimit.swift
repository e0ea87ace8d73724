import Synchronization

/// Lets a repeated warning through at most once per `interval`: a backend hiccup seen by every
/// request must not flood the log, yet the operator must learn of it, and how often it happened.
public final class WarningRateLimit: Sendable {
    private struct State {
        var lastLogged: ContinuousClock.Instant?
        var heldBack = 0
    }

    public let interval: Duration
    private let state = Mutex(State())

    public init(interval: Duration = .seconds(60)) {
        self.interval = interval
    }

    /// Nil when this occurrence should not be logged; otherwise how many were held back since the
    /// last one logged (to say so in the message).
    public func admit() -> Int? {
        let now = ContinuousClock.now
        return state.withLock { state in
            if let last = state.lastLogged, now - last < interval {
                state.heldBack += 1
                return nil
            }
            defer { state = State(lastLogged: now, heldBack: 0) }
            return state.heldBack
        }
    }
}
