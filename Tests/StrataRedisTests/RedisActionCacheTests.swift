import Foundation
import StrataAPI
import StrataActionCache
import StrataCore
import StrataRedis
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

@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct RedisActionCacheTests {
    func cache(_ client: RedisClient, _ entryType: ActionCacheEntryType = .actionResultDigest, migrate: Bool = false,
               salt: String? = nil, cas: any BlobStore = LRUBlobStore(capacityBytes: 64 << 20)) -> RedisActionCache {
        RedisActionCache(
            client: client, entries: ActionCacheEntries(entryType: entryType, migrateEntries: migrate, cas: cas), keySalt: salt)
    }

    func raw(_ client: RedisClient, _ key: String) async throws -> Data? {
        switch try await client.send("GET", key) {
        case .bulk(let data): return data
        case .null: return nil
        case let reply: throw ConformanceFailure("GET \(key) answered \(reply)")
        }
    }

    func set(_ client: RedisClient, _ key: String, _ value: Data) async throws {
        try await client.send(RedisCommand(binary: [Data("SET".utf8), Data(key.utf8), value]))
    }

    @Test(arguments: ActionCacheConformance.cases, ActionCacheLayout.all)
    func conformance(_ check: ActionCacheConformance, _ layout: ActionCacheLayout) async throws {
        try await withSharedRedis { client in
            let salt = layout.salted ? TestServices.uniqueName("salt") : nil
            try await check.run(on: cache(client, layout.entryType, salt: salt))
        }
    }

    @Test func keysAndValuesAreBuildGrids() async throws {
        try await withSharedRedis { client in
            let cas = LRUBlobStore(capacityBytes: 1 << 20)
            let salt = TestServices.uniqueName("salt")
            let action = Blob.random(size: 321).digest
            let result = ActionCacheConformance.result(stdout: "layout")
            let serialized: Data = try result.serializedBytes()

            // action-result: the ActionResult itself under action-cache.hash_size.
            try await cache(client, .actionResult, cas: cas).update(action, result)
            #expect(try await raw(client, "action-cache.\(action.hash)_321") == serialized)

            // action-result-digest, salted: the Digest of the ActionResult blob, which is in the CAS.
            try await cache(client, .actionResultDigest, salt: salt, cas: cas).update(action, result)
            let value = try #require(try await raw(client, "action-cache.\(salt).\(action.hash)_321"))
            let reference = try Build_Bazel_Remote_Execution_V2_Digest(serializedBytes: value)
            #expect(reference.hash == Digest.of(serialized).hash && reference.sizeBytes == Int64(serialized.count))
            #expect(try await cas.readAll(Digest.of(serialized)) == serialized)
            try await client.send("DEL", "action-cache.\(action.hash)_321", "action-cache.\(salt).\(action.hash)_321")
        }
    }

    /// Entries BuildGrid wrote are read whatever this cache's entry type, with or without migration.
    @Test(arguments: ActionCacheEntryType.allCases, [false, true])
    func readsBothKindsOfEntryAndMigrates(_ entryType: ActionCacheEntryType, _ migrate: Bool) async throws {
        try await withSharedRedis { client in
            let cas = LRUBlobStore(capacityBytes: 1 << 20)
            let cache = cache(client, entryType, migrate: migrate, cas: cas)
            let result = ActionCacheConformance.result(stdout: "from buildgrid")
            let serialized: Data = try result.serializedBytes()
            let blob = Digest.of(serialized)
            let reference: Data = try Build_Bazel_Remote_Execution_V2_Digest.with {
                $0.hash = blob.hash
                $0.sizeBytes = blob.sizeBytes
            }.serializedBytes()

            let inline = Blob.random(size: 10).digest, byDigest = Blob.random(size: 10).digest
            try await set(client, cache.key(for: inline), serialized)
            try await cas.write(blob, data: serialized)
            try await set(client, cache.key(for: byDigest), reference)

            #expect(try await cache.get(inline) == result)
            #expect(try await cache.get(byDigest) == result)
            let wanted = entryType == .actionResult ? serialized : reference
            let inlineNow = try await raw(client, cache.key(for: inline))
            let byDigestNow = try await raw(client, cache.key(for: byDigest))
            #expect(inlineNow == (migrate ? wanted : serialized))
            #expect(byDigestNow == (migrate ? wanted : reference))
            try await client.send("DEL", cache.key(for: inline), cache.key(for: byDigest))
        }
    }

    @Test func allowUpdatesFalseIsPermissionDeniedAndStoresNothing() async throws {
        try await withSharedRedis { client in
            let base = cache(client, .actionResult)
            let cache = UpdatePolicyActionCache(base, allowUpdates: false, cacheFailedActions: true)
            let action = Blob.random(size: 10).digest
            await expectStrataError(.permissionDenied, "an update with allow-updates: false") {
                try await cache.update(action, ActionCacheConformance.result())
            }
            let stored = try await raw(client, base.key(for: action))
            #expect(!cache.allowsUpdates)
            #expect(stored == nil)
        }
    }

    @Test func failedActionsAreAnsweredOKButNotStored() async throws {
        try await withSharedRedis { client in
            let base = cache(client)
            let cache = UpdatePolicyActionCache(base, allowUpdates: true, cacheFailedActions: false)
            let failed = Blob.random(size: 10).digest, succeeded = Blob.random(size: 10).digest
            try await cache.update(failed, ActionCacheConformance.result(exitCode: 1))
            try await cache.update(succeeded, ActionCacheConformance.result(exitCode: 0))
            #expect(try await raw(client, base.key(for: failed)) == nil)
            #expect(try await cache.get(failed) == nil)
            #expect(try await cache.get(succeeded) == ActionCacheConformance.result(exitCode: 0))
            try await base.remove(succeeded)
        }
    }

    @Test func unusableEntriesAreAbsentAndRemoved() async throws {
        try await withSharedRedis { client in
            let cache = cache(client, .actionResultDigest)
            // Not a protobuf at all.
            let garbage = Blob.random(size: 10).digest
            try await set(client, cache.key(for: garbage), Data([0xff, 0xff, 0xff, 0x07, 0x01]))
            // A Digest whose ActionResult blob is not in the CAS.
            let dangling = Blob.random(size: 10).digest
            let missing = Blob.random(size: 99).digest
            try await set(client, cache.key(for: dangling), try Build_Bazel_Remote_Execution_V2_Digest.with {
                $0.hash = missing.hash
                $0.sizeBytes = missing.sizeBytes
            }.serializedBytes())
            // A key of another type.
            let wrongType = Blob.random(size: 10).digest
            try await client.send("HSET", cache.key(for: wrongType), "field", "value")

            for action in [garbage, dangling, wrongType] {
                #expect(try await cache.get(action) == nil)
                #expect(try await client.send("EXISTS", cache.key(for: action)).integer == 0, "\(action) was not removed")
            }
        }
    }

    @Test func redisDownIsUnavailable() async throws {
        let redis = try await PrivateRedis()
        var configuration = redis.configuration
        configuration.retries = 1
        configuration.timeout = .seconds(2)
        let client = RedisClient(configuration)
        defer { Task { await client.shutdown() } }
        let cache = cache(client, .actionResult)
        let action = Blob.random(size: 10).digest
        try await cache.update(action, ActionCacheConformance.result())
        #expect(try await cache.get(action) == ActionCacheConformance.result())
        redis.kill()
        for (what, call) in [
            ("get", { _ = try await cache.get(action) }),
            ("update", { try await cache.update(action, ActionCacheConformance.result()) }),
            ("remove", { try await cache.remove(action) }),
        ] as [(String, () async throws -> Void)] {
            let (error, _) = await expectStrataError(.unavailable, "\(what) while Redis is down", call)
            #expect(error?.message.contains("127.0.0.1:\(redis.port)") == true, "\(String(describing: error))")
        }
    }
}
