import Foundation
import StrataConfig
import StrataCore
import StrataRedis
import StrataStorage
import Testing

@Suite struct RedisConfigTests {
    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "redis.yml", environment: ["REDIS_PASSWORD": "from-env"])
    }

    func expectError(_ yaml: String, line: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "redis.yml", line: line, [fragment], sourceLocation: sourceLocation) { try parse(yaml) }
    }

    @Test func connectionAndIndexWithEveryOption() throws {
        let configuration = try parse("""
            server: [!channel {address: "127.0.0.1:1"}]
            connections:
              - !redis-connection &redis
                host: redis.internal
                port: 6380
                password: !expand-vars ${REDIS_PASSWORD}
                db: 2
                retries: 5
                protocol: 2
                pool-size: 3
                timeout: 1.5
            storages:
              - !redis-index &index
                storage: !disk-storage {path: /nonexistent/strata-redis-config/a}
                redis: *redis
                prefix: "cas:"
                refresh-accesstime-older-than: 30
              - !redis-index &other
                storage: !disk-storage {path: /nonexistent/strata-redis-config/b}
                redis: *redis
            instances:
              - name: a
                services:
                  - !cas {storage: *index}
                  - !bytestream {storage: *index}
              - name: b
                services:
                  - !cas {storage: *other}
            """)
        let a = try #require(configuration.instances.first { $0.name == "a" })
        let b = try #require(configuration.instances.first { $0.name == "b" })
        let index = try #require(a.cas?.store as? RedisIndex)
        let other = try #require(b.cas?.store as? RedisIndex)
        #expect(a.byteStream?.store as? RedisIndex === index)
        #expect(index.client === other.client, "one !redis-connection node must be one client")
        #expect(configuration.backgroundServices.count == 1)
        #expect(index.client.configuration == RedisConfiguration(
            host: "redis.internal", port: 6380, password: "from-env", database: 2, retries: 5, poolSize: 3,
            timeout: .milliseconds(1500)))
        #expect(index.prefix == "cas:")
        #expect(index.refreshAccessTimeOlderThan == .seconds(30))
        #expect((index.backingStore.unwrapped as? DiskBlobStore)?.root.path == "/nonexistent/strata-redis-config/a")
        #expect(other.prefix == "strata:index:")
        #expect(configuration.storageSummary.contains { $0.contains("!redis-index at redis.internal:6380") })
    }

    @Test func defaults() throws {
        let configuration = try parse("""
            server: [!channel {address: "127.0.0.1:1"}]
            instances:
              - name: ""
                services:
                  - !cas
                    storage: !redis-index
                      storage: !disk-storage {path: /nonexistent/strata-redis-config}
                      redis: !redis-connection {host: localhost}
            """)
        let index = try #require(configuration.instances[0].cas?.store as? RedisIndex)
        let defaults = index.client.configuration
        #expect(defaults == RedisConfiguration(
            host: "localhost", port: 6379, password: nil, database: 0, retries: 3, poolSize: 8, timeout: .seconds(5)))
        #expect(index.prefix == "strata:index:")
        #expect(index.refreshAccessTimeOlderThan == .zero)
        #expect(configuration.backgroundServices.count == 1)
        // Loading starts nothing: the client's threads (and its connections) come with its first call.
        #expect(!index.client.isRunning)
    }

    @Test func errorsNameFileLineAndKey() {
        let head = """
            server: [!channel {address: "127.0.0.1:1"}]
            connections:
              - !redis-connection

            """
        let tail = "instances: [{name: \"\", services: []}]\n"
        expectError(head + "    host: h\n    dns-srv-record: _redis._tcp.example\n" + tail, line: 5,
                    "connections[0].dns-srv-record: option \"dns-srv-record\" is not supported by Strata yet")
        expectError(head + "    host: h\n    sentinel-master-name: main\n" + tail, line: 5, "\"sentinel-master-name\" is not supported")
        expectError(head + "    host: h\n    protocol: 3\n" + tail, line: 5, "connections[0].protocol: only protocol 2")
        expectError(head + "    host: h\n    port: 70000\n" + tail, line: 5, "at most 65535")
        expectError(head + "    host: h\n    retries: -1\n" + tail, line: 5, "connections[0].retries: must be at least 0")
        expectError(head + "    host: h\n    pool-size: 0\n" + tail, line: 5, "connections[0].pool-size: must be at least 1")
        expectError(head + "    host: h\n    timeout: soon\n" + tail, line: 5, "connections[0].timeout: expected a number of seconds")
        expectError(head + "    host: h\n    timeout: 0\n" + tail, line: 5, "must be at least 0.001")
        expectError(head + "    hots: h\n" + tail, line: 4, "unknown option \"hots\"")
        expectError(head + "    port: 6379\n" + tail, line: 3, "!redis-connection needs a host")

        let index = """
            server: [!channel {address: "127.0.0.1:1"}]
            storages:
              - !redis-index

            """
        expectError(index + "    redis: !redis-connection {host: h}\n" + tail, line: 3, "!redis-index needs a storage")
        expectError(index + "    storage: !lru-storage {size: 1M}\n" + tail, line: 3, "!redis-index needs redis")
        expectError(index + "    storage: !lru-storage {size: 1M}\n    redis: !lru-storage {size: 1M}\n" + tail, line: 5,
                    "storages[0].redis: expected !redis-connection, found !lru-storage")
        expectError(index + "    storage: !lru-storage {size: 1M}\n    redis: !redis-connection {host: h}\n    window-size: 3\n" + tail,
                    line: 6, "unknown option \"window-size\"")
        expectError(index + "    storage: !lru-storage {size: 1M}\n    redis: !redis-connection {host: h}\n    refresh-accesstime-older-than: -1\n" + tail,
                    line: 6, "must not be negative")
        expectError(index + "    storage: !redis-storage {redis: !redis-connection {host: h}}\n    redis: !redis-connection {host: h}\n" + tail,
                    line: 4, "!redis-storage is not supported by Strata yet")
    }
}
