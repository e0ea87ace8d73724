import Foundation
import Synchronization

/// The leases each bot session was last sent and has not reported back yet, so that a lease missing
/// from a bot's next report can be told apart: lost on the way to the bot, or dropped by it.
///
/// Leases go out ACTIVE (as BuildGrid sends them), so the Remote Workers API's PENDING → ACTIVE step
/// cannot say whether a bot received one. A bot reports every lease it holds in each
/// UpdateBotSession; one that omits a lease it was just sent most likely never got the answer (its
/// long-poll timed out or its connection dropped while the server answered). Such a lease is sent
/// again, once, instead of costing the job one of its `max-job-attempts`; a lease the bot had already
/// reported, or omits a second time, goes back to the queue as before.
///
/// Per process: with several bots processes, a bot whose next call reaches another process is
/// handled as before (the lease is requeued). Entries of sessions that never call again are dropped
/// (at most a minute) after the session has expired.
final class LeaseOffers: Sendable {
    private struct Offer {
        /// Sent in the last answer, not reported by the bot before.
        var jobIDs: Set<String>
        /// Those of `jobIDs` already sent once more: a second omission requeues them.
        var resent: Set<String>
        var expires: Date
    }

    private struct State {
        var offers: [String: Offer] = [:]
        var lastPruned = Date()
    }

    private let state = Mutex(State())

    /// What the session's last answer carried that the bot had not reported, and which of it was
    /// already a second sending; forgotten here (the caller records the next answer).
    func take(session: String) -> (sent: Set<String>, resent: Set<String>) {
        state.withLock { state in
            guard let offer = state.offers.removeValue(forKey: session) else { return ([], []) }
            return (offer.jobIDs, offer.resent)
        }
    }

    /// Records the jobs an answer to the session carries that the bot did not report in its request.
    func record(session: String, sent jobIDs: Set<String>, resent: Set<String>, expires: Date, now: Date = Date()) {
        state.withLock { state in
            if now.timeIntervalSince(state.lastPruned) > 60 {
                state.offers = state.offers.filter { $0.value.expires > now }
                state.lastPruned = now
            }
            state.offers[session] = jobIDs.isEmpty ? nil : Offer(jobIDs: jobIDs, resent: resent.intersection(jobIDs), expires: expires)
        }
    }

    func forget(session: String) {
        _ = state.withLock { $0.offers.removeValue(forKey: session) }
    }
}
