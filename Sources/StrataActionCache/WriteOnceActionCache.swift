import Foundation
import StrataCore
import Synchronization

/// Refuses to change an entry once written: a second update with a different result is
/// ALREADY_EXISTS (the spec's code for "the entity a client tried to create exists"), the same
/// result again is fine. Useful where results must never be replaced, e.g. a cache that
/// reproducibility checks read from.
///
/// Updates of one action are serialized within this server so the check and the write cannot
/// interleave; two servers sharing the base cache can still race, and the base decides then.
public final class WriteOnceActionCache: ActionCache {
    public let base: any ActionCache
    /// Actions with an update running here, each with the updates waiting for it, first come first.
    private let inFlight = Mutex<[Digest: [CheckedContinuation<Void, Never>]]>([:])

    public init(_ base: any ActionCache) { self.base = base }

    public var allowsUpdates: Bool { base.allowsUpdates }

    public func get(_ action: Digest) async throws -> ActionResult? { try await base.get(action) }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        try await serialized(action) {
            if let existing = try await base.get(action) {
                guard existing == result else {
                    throw StrataError(.alreadyExists, "action \(action) already has a different cached result, and this cache is write-once")
                }
                return
            }
            try await base.update(action, result)
        }
    }

    public func remove(_ action: Digest) async throws { try await base.remove(action) }

    /// Runs `body` when no other update of `action` runs here; waiting updates go in arrival order.
    private func serialized(_ action: Digest, _ body: () async throws -> Void) async throws {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = inFlight.withLock { state in
                guard state[action] != nil else {
                    state[action] = []
                    return true
                }
                state[action]!.append(continuation)
                return false
            }
            if acquired { continuation.resume() }
        }
        defer {
            // Hands the action over to the next waiter, if any, without releasing it in between.
            let next = inFlight.withLock { state -> CheckedContinuation<Void, Never>? in
                guard var waiters = state[action], !waiters.isEmpty else {
                    state[action] = nil
                    return nil
                }
                let first = waiters.removeFirst()
                state[action] = waiters
                return first
            }
            next?.resume()
        }
        try await body()
    }
}
