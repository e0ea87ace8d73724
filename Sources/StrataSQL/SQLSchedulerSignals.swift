import Foundation
import Logging
import PostgresNIO
import StrataCore
import Synchronization

/// The local waiters of one SQLScheduler (watch streams, bots long-polling), woken by keys: the
/// payloads of the scheduler's NOTIFY channel ("job:{id}", "op:{name}", "queue", "session:{name}").
///
/// A waiter is registered *before* the caller reads the database and awaited after, so a notification
/// arriving in between is not lost: it marks the waiter fired and the wait returns at once.
final class SQLSchedulerSignals: Sendable {
    final class Waiter: Sendable {
        let keys: Set<String>
        private struct State {
            var fired = false
            var continuation: CheckedContinuation<Void, Never>?
            var timer: Task<Void, Never>?
        }

        private let state = Mutex(State())

        init(keys: Set<String>) { self.keys = keys }

        var fired: Bool { state.withLock { $0.fired } }

        func fire() {
            let (continuation, timer) = state.withLock { state in
                state.fired = true
                defer {
                    state.continuation = nil
                    state.timer = nil
                }
                return (state.continuation, state.timer)
            }
            timer?.cancel()
            continuation?.resume()
        }

        /// Returns when fired, at `deadline`, or when the calling task is cancelled; true when fired.
        @discardableResult
        func wait(until deadline: ContinuousClock.Instant) async -> Bool {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let firedAlready = state.withLock { state in
                        guard !state.fired else { return true }
                        state.continuation = continuation
                        return false
                    }
                    if firedAlready { return continuation.resume() }
                    let timer = Task { [weak self] in
                        try? await Task.sleep(until: deadline, clock: .continuous)
                        guard !Task.isCancelled else { return }
                        self?.timeOut()
                    }
                    let keep = state.withLock { state in
                        guard state.continuation != nil else { return false }
                        state.timer = timer
                        return true
                    }
                    if !keep { timer.cancel() }
                }
            } onCancel: {
                timeOut()
            }
            return fired
        }

        /// Resumes the wait without marking the waiter fired.
        private func timeOut() {
            let continuation = state.withLock { state in
                defer {
                    state.continuation = nil
                    state.timer = nil
                }
                return state.continuation
            }
            continuation?.resume()
        }
    }

    private let waiters = Mutex<[ObjectIdentifier: Waiter]>([:])

    /// A waiter for any of `keys`; remove it when done (`defer`).
    func register(_ keys: Set<String>) -> Waiter {
        let waiter = Waiter(keys: keys)
        waiters.withLock { $0[ObjectIdentifier(waiter)] = waiter }
        return waiter
    }

    func remove(_ waiter: Waiter) {
        waiters.withLock { $0[ObjectIdentifier(waiter)] = nil }
        waiter.fire()
    }

    func fire(_ key: String) {
        let woken = waiters.withLock { $0.values.filter { $0.keys.contains(key) } }
        for waiter in woken { waiter.fire() }
    }

    /// Wakes everyone: after the LISTEN connection was (re)established, notifications sent while it
    /// was down are lost, so every waiter re-reads the database.
    func fireAll() {
        let woken = waiters.withLock { Array($0.values) }
        for waiter in woken { waiter.fire() }
    }

    var count: Int { waiters.withLock { $0.count } }
}

/// The one LISTEN connection of a process (a dedicated connection, not one of the pool's), held for as
/// long as the scheduler lives, fanning notifications out to `signals`. It reconnects after a loss (a
/// pause of `retryDelay`); while it is down, waiters still poll the database every second, so a lost
/// notification only delays.
final class SQLSchedulerListener: Sendable {
    private let task: Mutex<Task<Void, Never>?> = Mutex(nil)
    private let state = ListenState()

    /// Whether LISTEN is active now (tests wait for it, to prove a wake came from a notification).
    var isListening: Bool { state.listening.withLock { $0 } }

    private final class ListenState: Sendable {
        let listening = Mutex(false)
    }
    static let retryDelay: Duration = .seconds(1)

    /// Starts listening unless already started.
    func start(connection sql: SQLConnection, channel: String, signals: SQLSchedulerSignals, logger: Logger) {
        task.withLock { task in
            guard task == nil else { return }
            task = Task { [state] in
                while !Task.isCancelled {
                    do {
                        let connection = try await sql.openDedicatedConnection()
                        do {
                            try await connection.listen(on: channel) { notifications in
                                state.listening.withLock { $0 = true }
                                signals.fireAll()
                                for try await notification in notifications {
                                    signals.fire(notification.payload)
                                }
                            }
                        } catch {
                            try? await connection.close()
                            throw error
                        }
                        try? await connection.close()
                    } catch {
                        if !Task.isCancelled {
                            logger.debug("scheduler LISTEN connection lost; reconnecting", metadata: ["error": "\(error)"])
                        }
                    }
                    state.listening.withLock { $0 = false }
                    try? await Task.sleep(for: Self.retryDelay)
                }
            }
        }
    }

    func stop() {
        task.withLock { $0 }?.cancel()
    }
}
