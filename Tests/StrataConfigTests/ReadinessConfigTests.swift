import Foundation
import StrataConfig
import StrataCore
import Testing

@Suite struct ReadinessConfigTests {
    /// Every backend that can be asked is registered once (aliases share one), named by its tag and
    /// where it points, at its file and line; loading asks none of them.
    @Test func everyBackendIsRegisteredOnceWithItsLocation() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("strata-readiness-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let configuration = try Configuration.parse(yaml: """
            server: [!channel {address: "127.0.0.1:1"}]
            connections:
              - !redis-connection &redis {host: 127.0.0.1, port: 1}
              - !sql-connection &sql {connection-string: "postgresql://strata@127.0.0.1:1/strata"}
            storages:
              - !sql-storage &small {sql: *sql}
              - !s3-storage &large {bucket: cas, endpoint: "http://127.0.0.1:1", access-key: a, secret-key: b}
              - !disk-storage &disk {path: "\(folder.path)/cas"}
              - !remote-storage &remote {url: "grpc://127.0.0.1:1"}
              - !sharded-storage &sharded
                shards:
                  - {name: a, storage: !redis-index {redis: *redis, storage: *large}}
                  - {name: b, storage: !redis-index {redis: *redis, prefix: "b:", storage: *disk}}
            caches:
              - !redis-action-cache &ac {redis: *redis, storage: *sharded}
            instances:
              - name: ""
                services:
                  - !cas {storage: *sharded}
                  - !bytestream {storage: *sharded}
                  - !action-cache {cache: *ac}
              - name: other
                services:
                  - !cas {storage: !size-differentiated-storage {size-limited-storages: [{max-size: 1M, storage: *small}], fallback: *remote}}
                  - !action-cache {cache: !disk-action-cache {path: "\(folder.path)/ac"}}
            """, file: "ready.yml")
        let backends = configuration.readiness.backends
        #expect(backends.map(\.name) == [
            "!redis-connection 127.0.0.1:1",
            "!sql-connection \(try #require(backends.dropFirst().first?.name.dropFirst("!sql-connection ".count)))",
            "!s3-storage bucket cas at http://127.0.0.1:1",
            "!disk-storage \(folder.path)/cas",
            "!remote-storage 127.0.0.1:1",
            "!disk-action-cache \(folder.path)/ac",
        ])
        #expect(backends.map(\.location) == [
            "ready.yml:3: connections[0]", "ready.yml:4: connections[1]", "ready.yml:7: storages[1]",
            "ready.yml:8: storages[2]", "ready.yml:9: storages[3]", "ready.yml:25: instances[1].services[1].cache",
        ])
        #expect(!FileManager.default.fileExists(atPath: folder.path), "loading touched the disk")
    }
}
