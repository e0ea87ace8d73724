import Foundation
import StrataActionCache
import StrataConfig
import StrataCore
import StrataRedis
import StrataS3
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct RedisS3ActionCacheConfigTests {
    static let environment = ["SECRET": "s3cr3t"]

    func parse(_ yaml: String, environment: [String: String] = Self.environment) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "ac.yml", environment: environment)
    }

    /// A configuration whose only instance serves `cache` (declared under `caches:` from line 6 on).
    func config(_ cache: String, redis: String = "{host: 127.0.0.1, port: 6379}", cas: Bool = false) -> String {
        """
        server: [!channel {address: "127.0.0.1:1"}]
        connections:
          - !redis-connection &redis \(redis)
        storages: [!lru-storage &cas {size: 1M}]
        caches:
          - \(cache)
        instances:
          - name: ""
            services:
        \(cas ? "      - !cas {storage: *cas}\n" : "")      - !action-cache {cache: *ac}
        """
    }

    /// The instance's cache without the completeness check the config puts around it, and that check's CAS.
    func served(_ configuration: Configuration) throws -> (cache: any ActionCache, checkedAgainst: any BlobStore) {
        let cache = try #require(configuration.instances.first?.actionCache)
        let checking = try #require(cache as? CompletenessCheckingActionCache)
        return (checking.base, checking.cas)
    }

    func expectError(_ yaml: String, line: Int, _ fragments: String..., environment: [String: String] = Self.environment,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "ac.yml", line: line, fragments, sourceLocation: sourceLocation) {
            try parse(yaml, environment: environment)
        }
    }

    let action = try! Digest(hash: String(repeating: "ab", count: 32), sizeBytes: 7)

    @Test func redisWithEveryOption() throws {
        let configuration = try parse(config("""
            !redis-action-cache &ac
                storage: *cas
                redis: *redis
                allow-updates: false
                cache-failed-actions: false
                entry-type: Action-Result
                migrate-entries: yes
                cache-key-salt: team
            """))
        let (cache, checkedAgainst) = try served(configuration)
        let policy = try #require(cache as? UpdatePolicyActionCache)
        #expect(!policy.allowUpdates && !policy.cacheFailedActions && !cache.allowsUpdates)
        let redis = try #require(policy.base as? RedisActionCache)
        #expect(redis.entries.entryType == .actionResult && redis.entries.migrateEntries)
        #expect(redis.key(for: action) == "action-cache.team.\(action.hash)_7")
        #expect(redis.client.endpoint == "127.0.0.1:6379")
        // No !cas in the instance: results are checked against the cache's storage, where it keeps them.
        #expect(checkedAgainst as? LRUBlobStore === redis.entries.cas as? LRUBlobStore)
        #expect(checkedAgainst is LRUBlobStore)
    }

    @Test func redisDefaultsAreBuildGrids() throws {
        let configuration = try parse(config("!redis-action-cache &ac {storage: *cas, redis: *redis}", cas: true))
        let (cache, _) = try served(configuration)
        // allow-updates and cache-failed-actions default to true: no policy in the way.
        let redis = try #require(cache as? RedisActionCache)
        #expect(redis.entries.entryType == .actionResultDigest && !redis.entries.migrateEntries)
        #expect(redis.key(for: action) == "action-cache.\(action.hash)_7")
        #expect(cache.allowsUpdates)
        // An empty salt is none, as BuildGrid's `if not salt`.
        let empty = try parse(config("!redis-action-cache &ac {storage: *cas, redis: *redis, cache-key-salt: \"\"}"))
        #expect(try #require(try served(empty).cache as? RedisActionCache).key(for: action) == "action-cache.\(action.hash)_7")
    }

    @Test func redisSharesTheConnection() throws {
        let configuration = try parse("""
            server: [!channel {address: "127.0.0.1:1"}]
            connections:
              - !redis-connection &redis {host: 127.0.0.1}
            storages: [!lru-storage &cas {size: 1M}]
            caches:
              - !redis-action-cache &a {storage: *cas, redis: *redis, cache-key-salt: a}
              - !redis-action-cache &b {storage: *cas, redis: *redis, cache-key-salt: b}
            instances:
              - name: a
                services: [!action-cache {cache: *a}]
              - name: b
                services: [!action-cache {cache: *b}]
            """)
        let clients = try configuration.instances.map { instance in
            let checking = try #require(instance.actionCache as? CompletenessCheckingActionCache)
            return try #require(checking.base as? RedisActionCache).client
        }
        #expect(clients.count == 2 && clients[0] === clients[1])
        #expect(configuration.backgroundServices.count == 1)
    }

    @Test(arguments: ["!s3action-cache", "!s3-action-cache"])
    func s3WithEveryOption(_ tag: String) throws {
        let configuration = try parse(config("""
            \(tag) &ac
                storage: *cas
                bucket: ac-{digest[0]}
                endpoint: http://127.0.0.1:9000
                access-key: AKID
                secret-key: !expand-vars $SECRET
                region: eu-west-3
                allow-updates: true
                cache-failed-actions: false
                entry-type: action-result
                migrate-entries: true
                cache-key-salt: team
            """))
        let (cache, _) = try served(configuration)
        let policy = try #require(cache as? UpdatePolicyActionCache)
        #expect(policy.allowUpdates && !policy.cacheFailedActions && cache.allowsUpdates)
        let s3 = try #require(policy.base as? S3ActionCache)
        #expect(s3.client.configuration.endpoint == "http://127.0.0.1:9000")
        #expect(s3.client.configuration.region == "eu-west-3")
        #expect(s3.client.configuration.credentials == S3Credentials(accessKey: "AKID", secretKey: "s3cr3t"))
        #expect(try s3.bucket.bucket(forHash: action.hash) == "ac-a")
        #expect(s3.key(for: action) == "team_\(action.hash)_7")
        #expect(s3.entries.entryType == .actionResult && s3.entries.migrateEntries)
    }

    @Test func s3DefaultsAreBuildGrids() throws {
        let configuration = try parse(config("!s3action-cache &ac {storage: *cas, bucket: ac}", cas: true), environment: [
            "AWS_ACCESS_KEY_ID": "envkey", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_DEFAULT_REGION": "ap-south-1",
        ])
        let (cache, _) = try served(configuration)
        let s3 = try #require(cache as? S3ActionCache)
        #expect(s3.client.configuration.endpoint == "https://s3.ap-south-1.amazonaws.com")
        #expect(s3.client.configuration.credentials == S3Credentials(accessKey: "envkey", secretKey: "envsecret"))
        #expect(s3.entries.entryType == .actionResultDigest && !s3.entries.migrateEntries)
        #expect(s3.key(for: action) == "\(action.hash)_7")
    }

    @Test func badOptionsNameFileLineAndKey() {
        expectError(config("!redis-action-cache &ac {redis: *redis}"), line: 6, "caches[0]", "needs a storage")
        expectError(config("!redis-action-cache &ac {storage: *cas}"), line: 6, "caches[0]", "needs redis")
        expectError(config("""
            !redis-action-cache &ac
                storage: *cas
                redis: *redis
                entry-type: action-digest
            """), line: 9, "caches[0].entry-type", "action-result or action-result-digest")
        expectError(config("!redis-action-cache &ac {storage: *cas, redis: *redis, ttl: 5}"), line: 6, "ttl")
        expectError(config("!redis-action-cache &ac {storage: *cas, redis: *redis, migrate-entries: maybe}"), line: 6,
                    "caches[0].migrate-entries")
        expectError(config("!s3action-cache &ac {storage: *cas, access-key: a, secret-key: b}"), line: 6,
                    "caches[0]", "needs a bucket")
        expectError(config("!s3action-cache &ac {storage: *cas, bucket: ac, access-key: a}"), line: 6,
                    "caches[0].access-key", "give both or neither")
        expectError(config("!s3action-cache &ac {storage: *cas, bucket: ac}"), line: 6, "AWS_ACCESS_KEY_ID")
        expectError(config("!s3-action-cache &ac {storage: *cas, bucket: ac, access-key: a, secret-key: b, hash-prefix-size: 2}"),
                    line: 6, "hash-prefix-size")
        expectError(config("!s3action-cache &ac {storage: *cas, bucket: \"ac-{digest[99]}\", access-key: a, secret-key: b}"),
                    line: 6, "caches[0].bucket", "beyond")
    }

    // MARK: Through the config, on the real services

    @Test(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
    func redisPolicyOptionsOnARealRedis() async throws {
        guard let address = TestServices.redis, let colon = address.lastIndex(of: ":") else {
            throw MissingServiceError("STRATA_TEST_REDIS")
        }
        let host = address[..<colon], port = address[address.index(after: colon)...]
        let salt = TestServices.uniqueName("salt")
        try await checkPolicies(
            readOnly: "!redis-action-cache &ac {storage: *cas, redis: *redis, entry-type: action-result, allow-updates: false, cache-key-salt: \(salt)}",
            noFailures: "!redis-action-cache &ac {storage: *cas, redis: *redis, entry-type: action-result, cache-failed-actions: false, cache-key-salt: \(salt)}",
            redis: "{host: \"\(host)\", port: \(port)}")
    }

    @Test(.enabled(if: TestServices.available("STRATA_TEST_S3")))
    func s3PolicyOptionsOnARealS3() async throws {
        guard let s3 = TestServices.s3 else { throw MissingServiceError("STRATA_TEST_S3") }
        let bucket = TestServices.uniqueName("ac")
        try await S3Client(S3ClientConfiguration(
            endpoint: s3.endpoint, region: "us-east-1",
            credentials: S3Credentials(accessKey: s3.accessKey, secretKey: s3.secretKey))).createBucket(bucket)
        let common = "storage: *cas, bucket: \(bucket), endpoint: \"\(s3.endpoint)\", access-key: \"\(s3.accessKey)\", secret-key: \"\(s3.secretKey)\", region: us-east-1, entry-type: action-result"
        try await checkPolicies(
            readOnly: "!s3action-cache &ac {\(common), allow-updates: false}",
            noFailures: "!s3action-cache &ac {\(common), cache-failed-actions: false}")
    }

    /// allow-updates: false refuses updates with PERMISSION_DENIED; cache-failed-actions: false answers
    /// OK for a failed action and stores nothing, while a successful one is stored and served. The two
    /// caches come from two parses, hence two in-memory CASes: entries are inline (action-result) so
    /// that each can read what the other wrote.
    func checkPolicies(readOnly: String, noFailures: String, redis: String = "{host: 127.0.0.1}") async throws {
        let readOnlyCache = try #require(try parse(config(readOnly, redis: redis)).instances.first?.actionCache)
        let cache = try #require(try parse(config(noFailures, redis: redis)).instances.first?.actionCache)
        #expect(!readOnlyCache.allowsUpdates && cache.allowsUpdates)
        let failed = Blob.random(size: 10).digest, succeeded = Blob.random(size: 10).digest
        try await StrataTestSupport.expectError(.permissionDenied, "an update with allow-updates: false") {
            try await readOnlyCache.update(succeeded, ActionCacheConformance.result())
        }
        #expect(try await cache.get(succeeded) == nil)
        try await cache.update(failed, ActionCacheConformance.result(exitCode: 2))
        try await cache.update(succeeded, ActionCacheConformance.result())
        #expect(try await cache.get(failed) == nil)
        #expect(try await readOnlyCache.get(failed) == nil)
        #expect(try await cache.get(succeeded) == ActionCacheConformance.result())
        #expect(try await readOnlyCache.get(succeeded) == ActionCacheConformance.result())
    }
}
