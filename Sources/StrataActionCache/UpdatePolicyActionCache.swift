import StrataAPI
import StrataCore

/// BuildGrid's `allow-updates` and `cache-failed-actions`, with one meaning for every cache:
/// - a refused update (allow-updates: false) is PERMISSION_DENIED, and Capabilities says update_enabled
///   false so well-behaved clients never try;
/// - a result with a non-zero exit code is answered OK but not stored when cache-failed-actions is
///   false, because a failed build step should run again next time rather than fail from the cache.
public struct UpdatePolicyActionCache: ActionCache {
    public let base: any ActionCache
    public let allowUpdates: Bool
    public let cacheFailedActions: Bool

    public init(_ base: any ActionCache, allowUpdates: Bool, cacheFailedActions: Bool) {
        self.base = base
        self.allowUpdates = allowUpdates
        self.cacheFailedActions = cacheFailedActions
    }

    public var allowsUpdates: Bool { allowUpdates && base.allowsUpdates }

    public func get(_ action: Digest) async throws -> ActionResult? {
        try await base.get(action)
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        guard allowUpdates else {
            throw StrataError(.permissionDenied, "this action cache does not accept updates (allow-updates: false)")
        }
        if result.exitCode != 0 && !cacheFailedActions { return }
        try await base.update(action, result)
    }

    public func remove(_ action: Digest) async throws {
        try await base.remove(action)
    }
}
