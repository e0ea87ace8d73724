import Foundation
import StrataAPI
import StrataCore
import StrataStorage
import SwiftProtobuf

/// What the value of a key-value action cache entry (Redis, S3) holds, as BuildGrid's `entry-type`.
public enum ActionCacheEntryType: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The serialized ActionResult itself.
    case actionResult = "action-result"
    /// The serialized Digest of the ActionResult, which is a blob in the CAS (BuildGrid's default).
    case actionResultDigest = "action-result-digest"

    public var description: String { rawValue }
}

/// The values of a key-value action cache, exactly as BuildGrid 0.9.1 writes and reads them, so its
/// Redis keys and S3 objects are served as they are.
///
/// Reading recognises both kinds whatever `entryType` says (BuildGrid writes either, and a deployment
/// may have changed its setting): a value that parses as a Digest whose hash is as long as the action's
/// is a reference to the ActionResult in `cas`; anything else must parse as an ActionResult. The two
/// cannot be confused because ActionResult has no field 1 (Digest's `hash`).
public struct ActionCacheEntries: Sendable {
    public let entryType: ActionCacheEntryType
    /// Rewrite an entry of the other kind to `entryType` when it is read (BuildGrid's `migrate-entries`).
    public let migrateEntries: Bool
    public let cas: any BlobStore

    /// The largest ActionResult blob read from the CAS: an entry pointing at a larger one is unusable.
    public static let maxResultBytes: Int64 = 64 << 20

    public init(entryType: ActionCacheEntryType, migrateEntries: Bool, cas: any BlobStore) {
        self.entryType = entryType
        self.migrateEntries = migrateEntries
        self.cas = cas
    }

    public enum Decoded: Sendable {
        /// The result, and the value to store instead when the entry is migrated.
        case result(ActionResult, migratedValue: Data?)
        /// Not a usable entry (corrupt, or its ActionResult blob is gone): answer absent and remove it.
        case unusable(String)
    }

    /// The value to store for `result`; for `action-result-digest`, after the ActionResult is in the CAS.
    public func value(for action: Digest, _ result: ActionResult) async throws -> Data {
        let serialized = try serialize(result)
        switch entryType {
        case .actionResult: return serialized
        case .actionResultDigest: return try await storeInCAS(serialized, function: action.function)
        }
    }

    /// Decodes a stored value. Throws only when the CAS cannot answer: an outage is not a reason to
    /// drop an entry.
    public func decode(_ value: Data, for action: Digest) async throws -> Decoded {
        if let reference = try? Build_Bazel_Remote_Execution_V2_Digest(serializedBytes: value),
           !reference.hash.isEmpty, reference.hash.count == action.hash.count {
            let digest: Digest
            do {
                digest = try Digest(hash: reference.hash, sizeBytes: reference.sizeBytes, function: action.function)
            } catch {
                return .unusable("it references a malformed ActionResult digest: \(error.message)")
            }
            guard digest.sizeBytes <= Self.maxResultBytes else {
                return .unusable("its ActionResult blob \(digest) is larger than \(Self.maxResultBytes) bytes")
            }
            let blob: Data
            do {
                blob = try await cas.readAll(digest)
            } catch let error as StrataError where error.code == .notFound {
                return .unusable("its ActionResult blob \(digest) is not in the CAS")
            }
            guard let result = try? ActionResult(serializedBytes: blob) else {
                return .unusable("its ActionResult blob \(digest) is not a valid ActionResult")
            }
            let migrated = migrateEntries && entryType == .actionResult ? blob : nil
            return .result(result, migratedValue: migrated)
        }
        guard let result = try? ActionResult(serializedBytes: value) else {
            return .unusable("its \(value.count)-byte value is neither an ActionResult nor a Digest")
        }
        var migrated: Data?
        if migrateEntries && entryType == .actionResultDigest {
            migrated = try await storeInCAS(value, function: action.function)
        }
        return .result(result, migratedValue: migrated)
    }

    private func serialize(_ result: ActionResult) throws -> Data {
        do {
            return try result.serializedBytes()
        } catch {
            throw StrataError.invalidArgument("the ActionResult cannot be serialized: \(error)")
        }
    }

    /// Writes the ActionResult blob and returns the serialized Digest that refers to it.
    private func storeInCAS(_ serialized: Data, function: DigestFunction) async throws -> Data {
        let digest = Digest.of(serialized, function: function)
        try await cas.write(digest, data: serialized)
        let reference = Build_Bazel_Remote_Execution_V2_Digest.with {
            $0.hash = digest.hash
            $0.sizeBytes = digest.sizeBytes
        }
        return try reference.serializedBytes()
    }
}
