import Foundation
import StrataCore

/// A local tier (`cache`) over a shared one (`fallback`): gets try the local tier and fill it from
/// the fallback; updates go to the fallback first (it is the one other servers see), then locally.
public struct WithCacheActionCache: ActionCache {
    public let cache: any ActionCache
    public let fallback: any ActionCache

    public init(cache: any ActionCache, fallback: any ActionCache) {
        self.cache = cache
        self.fallback = fallback
    }

    public var allowsUpdates: Bool { fallback.allowsUpdates }

    public func get(_ action: Digest) async throws -> ActionResult? {
        // A local tier that is down is only slower, not an error.
        if let local = try? await cache.get(action) { return local }
        guard let result = try await fallback.get(action) else { return nil }
        try? await cache.update(action, result)
        return result
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        try await fallback.update(action, result)
        try? await cache.update(action, result)
    }

    public func remove(_ action: Digest) async throws {
        try await fallback.remove(action)
        try await cache.remove(action)
    }
}
