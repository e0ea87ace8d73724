import StrataAPI
import StrataCore

public typealias ActionResult = Build_Bazel_Remote_Execution_V2_ActionResult

/// The one interface every action cache implements. Keys are action digests (hash and size).
///
/// Contract (checked for every implementation by `ActionCacheConformance` in the tests): `get` of an
/// absent key is nil, never an error; `update` replaces; `remove` of an absent key is fine; errors are
/// `StrataError`s with the status code a client should get (UNAVAILABLE when a backend is down).
public protocol ActionCache: Sendable {
    /// The cached result, or nil when there is none.
    func get(_ action: Digest) async throws -> ActionResult?

    /// Stores `result` for `action`. Throws PERMISSION_DENIED when this cache refuses updates.
    func update(_ action: Digest, _ result: ActionResult) async throws

    /// Drops the entry of `action`, if any: a stale entry found by completeness checking.
    func remove(_ action: Digest) async throws

    /// Whether clients may update this cache (Capabilities' `update_enabled`).
    var allowsUpdates: Bool { get }
}

extension ActionCache {
    public var allowsUpdates: Bool { true }
}
