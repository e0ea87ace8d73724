import Foundation
import NIOPosix
import StrataAPI
import StrataActionCache
import StrataCore
import StrataS3
import StrataStorage
import StrataTestSupport
import SwiftProtobuf
import Testing

/// An entry type and salt: the four layouts the conformance suite runs against.
struct ActionCacheLayout: Sendable, CustomStringConvertible {
    let entryType: ActionCacheEntryType
    let salted: Bool

    static let all: [ActionCacheLayout] = ActionCacheEntryType.allCases.flatMap { type in
        [false, true].map { ActionCacheLayout(entryType: type, salted: $0) }
    }

    var description: String { "\(entryType)\(salted ? ", salted" : "")" }
}

extension S3Fixture {
    func actionCache(_ entryType: ActionCacheEntryType = .actionResultDigest, migrate: Bool = false, salt: String? = nil,
                     cas: any BlobStore = LRUBlobStore(capacityBytes: 64 << 20), client: S3Client? = nil) throws -> S3ActionCache {
        S3ActionCache(
            client: client ?? self.client, bucket: try S3BucketTemplate(bucket),
            entries: ActionCacheEntries(entryType: entryType, migrateEntries: migrate, cas: cas), keySalt: salt)
    }

    func raw(_ key: String) async throws -> Data? {
        do {
            return try await client.getObject(bucket: bucket, key: key).data
        } catch let error as StrataError where error.code == .notFound {
            return nil
        }
    }
}

@Suite(.enabled(if: TestServices.available("STRATA_TEST_S3")))
struct S3ActionCacheTests {
    @Test(arguments: ActionCacheConformance.cases, ActionCacheLayout.all)
    func conformance(_ check: ActionCacheConformance, _ layout: ActionCacheLayout) async throws {
        let fixture = try await S3Fixture.make("ac")
        try await check.run(on: try fixture.actionCache(layout.entryType, salt: layout.salted ? "salt" : nil))
    }

    @Test func keysAndValuesAreBuildGrids() async throws {
        let fixture = try await S3Fixture.make("ac")
        let cas = LRUBlobStore(capacityBytes: 1 << 20)
        let action = Blob.random(size: 321).digest
        let result = ActionCacheConformance.result(stdout: "layout")
        let serialized: Data = try result.serializedBytes()

        // action-result: the ActionResult itself under hash_size.
        try await fixture.actionCache(.actionResult, cas: cas).update(action, result)
        #expect(try await fixture.raw("\(action.hash)_321") == serialized)

        // action-result-digest, salted: the Digest of the ActionResult blob, which is in the CAS.
        try await fixture.actionCache(.actionResultDigest, salt: "team", cas: cas).update(action, result)
        let value = try #require(try await fixture.raw("team_\(action.hash)_321"))
        let reference = try Build_Bazel_Remote_Execution_V2_Digest(serializedBytes: value)
        #expect(reference.hash == Digest.of(serialized).hash && reference.sizeBytes == Int64(serialized.count))
        #expect(try await cas.readAll(Digest.of(serialized)) == serialized)

        // BuildGrid tests the salt against None: an empty one still adds its "_".
        try await fixture.actionCache(.actionResult, salt: "", cas: cas).update(action, result)
        #expect(try await fixture.raw("_\(action.hash)_321") == serialized)
    }

    @Test func bucketTemplatesShardByHash() async throws {
        let fixture = try await S3Fixture.make("ac")
        let action = Blob.random(size: 10).digest
        // Only the bucket whose name the template gives this hash exists.
        let sharded = "\(fixture.bucket)-\(action.hash.prefix(1))"
        try await fixture.client.createBucket(sharded)
        let cache = S3ActionCache(
            client: fixture.client, bucket: try S3BucketTemplate("\(fixture.bucket)-{digest[0]}"),
            entries: ActionCacheEntries(entryType: .actionResult, migrateEntries: false, cas: LRUBlobStore(capacityBytes: 1 << 20)))
        try await cache.update(action, ActionCacheConformance.result())
        #expect(try await fixture.client.headObject(bucket: sharded, key: "\(action.hash)_10") != nil)
        #expect(try await cache.get(action) == ActionCacheConformance.result())
    }

    /// Entries BuildGrid wrote are read whatever this cache's entry type, with or without migration.
    @Test(arguments: ActionCacheEntryType.allCases, [false, true])
    func readsBothKindsOfEntryAndMigrates(_ entryType: ActionCacheEntryType, _ migrate: Bool) async throws {
        let fixture = try await S3Fixture.make("ac")
        let cas = LRUBlobStore(capacityBytes: 1 << 20)
        let cache = try fixture.actionCache(entryType, migrate: migrate, cas: cas)
        let result = ActionCacheConformance.result(stdout: "from buildgrid")
        let serialized: Data = try result.serializedBytes()
        let blob = Digest.of(serialized)
        let reference: Data = try Build_Bazel_Remote_Execution_V2_Digest.with {
            $0.hash = blob.hash
            $0.sizeBytes = blob.sizeBytes
        }.serializedBytes()

        let inline = Blob.random(size: 10).digest, byDigest = Blob.random(size: 10).digest
        try await fixture.client.putObject(bucket: fixture.bucket, key: cache.key(for: inline), data: serialized)
        try await cas.write(blob, data: serialized)
        try await fixture.client.putObject(bucket: fixture.bucket, key: cache.key(for: byDigest), data: reference)

        #expect(try await cache.get(inline) == result)
        #expect(try await cache.get(byDigest) == result)
        let wanted = entryType == .actionResult ? serialized : reference
        #expect(try await fixture.raw(cache.key(for: inline)) == (migrate ? wanted : serialized))
        #expect(try await fixture.raw(cache.key(for: byDigest)) == (migrate ? wanted : reference))
    }

    @Test func allowUpdatesFalseIsPermissionDeniedAndStoresNothing() async throws {
        let fixture = try await S3Fixture.make("ac")
        let base = try fixture.actionCache(.actionResult)
        let cache = UpdatePolicyActionCache(base, allowUpdates: false, cacheFailedActions: true)
        let action = Blob.random(size: 10).digest
        try await expectError(.permissionDenied, "an update with allow-updates: false") {
            try await cache.update(action, ActionCacheConformance.result())
        }
        #expect(!cache.allowsUpdates)
        #expect(try await fixture.raw(base.key(for: action)) == nil)
    }

    @Test func failedActionsAreAnsweredOKButNotStored() async throws {
        let fixture = try await S3Fixture.make("ac")
        let base = try fixture.actionCache()
        let cache = UpdatePolicyActionCache(base, allowUpdates: true, cacheFailedActions: false)
        let failed = Blob.random(size: 10).digest, succeeded = Blob.random(size: 10).digest
        try await cache.update(failed, ActionCacheConformance.result(exitCode: 1))
        try await cache.update(succeeded, ActionCacheConformance.result(exitCode: 0))
        #expect(try await fixture.raw(base.key(for: failed)) == nil)
        #expect(try await cache.get(failed) == nil)
        #expect(try await cache.get(succeeded) == ActionCacheConformance.result(exitCode: 0))
    }

    @Test func unusableEntriesAreAbsentAndRemoved() async throws {
        let fixture = try await S3Fixture.make("ac")
        let cache = try fixture.actionCache(.actionResultDigest)
        let garbage = Blob.random(size: 10).digest
        try await fixture.client.putObject(bucket: fixture.bucket, key: cache.key(for: garbage), data: Data([0xff, 0xff, 0xff, 0x07, 0x01]))
        let dangling = Blob.random(size: 10).digest
        let missing = Blob.random(size: 99).digest
        try await fixture.client.putObject(
            bucket: fixture.bucket, key: cache.key(for: dangling),
            data: try Build_Bazel_Remote_Execution_V2_Digest.with {
                $0.hash = missing.hash
                $0.sizeBytes = missing.sizeBytes
            }.serializedBytes())
        for action in [garbage, dangling] {
            #expect(try await cache.get(action) == nil)
            #expect(try await fixture.client.headObject(bucket: fixture.bucket, key: cache.key(for: action)) == nil,
                    "\(action) was not removed")
        }
    }

    @Test func wrongSecretIsInternalNamingTheBucket() async throws {
        let fixture = try await S3Fixture.make("ac")
        let cache = try fixture.actionCache(client: fixture.clientWithSecret("not-the-secret"))
        let action = Blob.random(size: 10).digest
        for (what, call) in [
            ("get", { _ = try await cache.get(action) }),
            ("update", { try await cache.update(action, ActionCacheConformance.result()) }),
            ("remove", { try await cache.remove(action) }),
        ] as [(String, () async throws -> Void)] {
            do {
                try await call()
                Issue.record("\(what) with a wrong secret key succeeded")
            } catch let error as StrataError {
                #expect(error.code == .internal, "\(what): \(error)")
                #expect(error.message.contains("SignatureDoesNotMatch") && error.message.contains(fixture.bucket), "\(what): \(error)")
            }
        }
    }

    @Test func closedPortIsUnavailable() async throws {
        let port = try closedLocalPort()
        let threads = NIOThreadPool(numberOfThreads: 2)
        threads.start()
        defer { threads.shutdownGracefully { _ in } }
        let client = S3Client(S3ClientConfiguration(
            endpoint: "http://127.0.0.1:\(port)", region: "us-east-1",
            credentials: S3Credentials(accessKey: "a", secretKey: "b"), retry: S3RetryPolicy(maxAttempts: 2)), threadPool: threads)
        let cache = S3ActionCache(
            client: client, bucket: try S3BucketTemplate("nowhere"),
            entries: ActionCacheEntries(entryType: .actionResult, migrateEntries: false, cas: LRUBlobStore(capacityBytes: 1 << 20)))
        let action = Blob.random(size: 10).digest
        for (what, call) in [
            ("get", { _ = try await cache.get(action) }),
            ("update", { try await cache.update(action, ActionCacheConformance.result()) }),
            ("remove", { try await cache.remove(action) }),
        ] as [(String, () async throws -> Void)] {
            do {
                try await call()
                Issue.record("\(what) against a closed port succeeded")
            } catch let error as StrataError {
                #expect(error.code == .unavailable, "\(what): \(error)")
                #expect(error.message.contains("127.0.0.1:\(port)"), "\(what): \(error)")
            }
        }
    }
}
