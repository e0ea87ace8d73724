import StrataAPI
import StrataCore
import Synchronization

/// Action results in memory, at most `maxEntries`, evicting the least recently used.
public final class LRUActionCache: ActionCache {
    private let entries: Mutex<LRUDictionary<DigestKey, ActionResult>>
    public let maxEntries: Int

    public init(maxEntries: Int) {
        precondition(maxEntries > 0, "max-cached-refs must be positive")
        self.maxEntries = maxEntries
        self.entries = Mutex(LRUDictionary(capacity: Int64(maxEntries)))
    }

    public var count: Int { entries.withLock { $0.count } }

    public func get(_ action: Digest) async throws -> ActionResult? {
        entries.withLock { $0.get(action.key) }
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        entries.withLock { _ = $0.insert(action.key, result, cost: 1) }
    }

    public func remove(_ action: Digest) async throws {
        entries.withLock { _ = $0.remove(action.key) }
    }
}
