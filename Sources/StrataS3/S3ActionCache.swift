import Foundation
import Logging
import StrataActionCache
import StrataCore

/// Action results as S3 objects, laid out as BuildGrid 0.9.1's `!s3action-cache` so that its buckets
/// are served as they are: bucket `template.format(digest=hash)`, key `[salt_]hash_size`, object the
/// ActionResult or the Digest of its blob in the CAS (see `ActionCacheEntries`). That is a SHA-256
/// action's key; another digest function's action has its function before the hash,
/// `[salt_]{function}/hash_size` (`Digest.storageName`), so the same hex under two functions is two
/// objects.
///
/// An object that is not a usable entry is answered as absent and deleted, so the action runs again
/// and its new result replaces it.
public struct S3ActionCache: ActionCache {
    public let client: S3Client
    public let bucket: S3BucketTemplate
    public let entries: ActionCacheEntries
    /// BuildGrid's `cache-key-salt`. Unlike the Redis cache, BuildGrid tests it against None here, so an
    /// empty salt still adds its `_`: kept, or such a bucket's keys would not be found.
    public let keySalt: String?
    private let logger: Logger

    public init(client: S3Client, bucket: S3BucketTemplate, entries: ActionCacheEntries, keySalt: String? = nil,
                logger: Logger = Logger(label: "strata.action-cache.s3")) {
        self.client = client
        self.bucket = bucket
        self.entries = entries
        self.keySalt = keySalt
        self.logger = logger
    }

    public func key(for action: Digest) -> String {
        guard let keySalt else { return action.storageName }
        return "\(keySalt)_\(action.storageName)"
    }

    public func get(_ action: Digest) async throws -> ActionResult? {
        let bucket = try self.bucket.bucket(forHash: action.hash)
        let key = key(for: action)
        let value: Data
        do {
            value = try await client.getObject(bucket: bucket, key: key).data
        } catch let error as StrataError where error.code == .notFound {
            return nil
        }
        switch try await entries.decode(value, for: action) {
        case .unusable(let problem):
            logger.warning("S3 at \(client.configuration.endpoint): action cache entry \(bucket)/\(key) is unusable and is removed: \(problem)")
            do {
                try await remove(action)
            } catch {
                logger.warning("S3 at \(client.configuration.endpoint): cannot remove unusable action cache entry \(bucket)/\(key): \(error)")
            }
            return nil
        case .result(let result, let migratedValue):
            if let migratedValue {
                do {
                    try await client.putObject(bucket: bucket, key: key, data: migratedValue)
                } catch {
                    logger.warning("S3 at \(client.configuration.endpoint): cannot migrate action cache entry \(bucket)/\(key) to \(entries.entryType): \(error)")
                }
            }
            return result
        }
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        let bucket = try self.bucket.bucket(forHash: action.hash)
        let value = try await entries.value(for: action, result)
        try await client.putObject(bucket: bucket, key: key(for: action), data: value)
    }

    public func remove(_ action: Digest) async throws {
        let bucket = try self.bucket.bucket(forHash: action.hash)
        let key = key(for: action)
        if let failure = try await client.deleteObjects(bucket: bucket, keys: [key]).first {
            throw StrataError.internal("S3 bucket \"\(bucket)\": cannot delete action cache entry \(key): \(failure.code)")
        }
    }
}
