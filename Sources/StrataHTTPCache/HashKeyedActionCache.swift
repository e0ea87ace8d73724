import StrataActionCache
import StrataCore

/// An instance's action cache as both protocols share it: Bazel's HTTP cache protocol names an action
/// by the hash of its Action alone (`/ac/{hash}`), gRPC by hash and size, and every Strata action
/// cache keys entries by both.
///
/// An entry written over HTTP is stored under the hash with size 0 (`hashOnlyKey`): no Action
/// serializes to zero bytes with a non-empty hash, so that key can never be a gRPC client's. Here:
/// - `update` of a gRPC key also stores the entry under its hash-only key (`GET /ac/{hash}` finds it;
///   best effort);
/// - `get` of a gRPC key that has no entry answers the hash-only key's (an upload over HTTP);
/// - `remove` drops both.
/// With the completeness check below this decorator, each key's result is checked as it is handed out.
///
/// Every result stored or handed out tells `index` the sizes of the outputs it names, which
/// `GET /cas/{hash}` needs (`BlobSizeIndex`).
public struct HashKeyedActionCache: ActionCache {
    public let base: any ActionCache
    public let index: BlobSizeIndex

    public init(_ base: any ActionCache, index: BlobSizeIndex) {
        self.base = base
        self.index = index
    }

    public var allowsUpdates: Bool { base.allowsUpdates }

    /// The key an HTTP client's `/ac/{hash}` names.
    public static func hashOnlyKey(_ action: Digest) throws(StrataError) -> Digest {
        try Digest(hash: action.hash, sizeBytes: 0, function: action.function)
    }

    public func get(_ action: Digest) async throws -> ActionResult? {
        var result = try await base.get(action)
        if result == nil, action.sizeBytes != 0 { result = try await base.get(try Self.hashOnlyKey(action)) }
        if let result { index.record(BlobSizeIndex.digests(of: result, function: action.function)) }
        return result
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        try await base.update(action, result)
        // The copy for HTTP clients is best effort: the update the client asked for is done, and a
        // write-once cache may hold an equivalent entry there already (one hash is one action).
        if action.sizeBytes != 0 { try? await base.update(try Self.hashOnlyKey(action), result) }
        index.record(BlobSizeIndex.digests(of: result, function: action.function))
    }

    public func remove(_ action: Digest) async throws {
        try await base.remove(action)
        if action.sizeBytes != 0 { try await base.remove(try Self.hashOnlyKey(action)) }
    }
}
