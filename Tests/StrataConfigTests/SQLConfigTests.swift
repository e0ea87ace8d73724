import Foundation
import StrataConfig
import StrataCore
import StrataSQL
import StrataStorage
import Testing

@Suite struct SQLConfigTests {
    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "sql.yml", environment: ["PGPASS": "pw", "POOL_TIMEOUT": "7.5"])
    }

    func expectError(_ yaml: String, line: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "sql.yml", line: line, [fragment], sourceLocation: sourceLocation) { try parse(yaml) }
    }

    /// A config whose connection (lines 5-7) takes `connection` as extra option lines and whose storage
    /// (from line 8) is `storage`.
    func config(connection: String = "", storage: String) -> String {
        """
        server:
          - !channel
            address: "127.0.0.1:50051"
        connections:
          - !sql-connection &sql
            connection-string: postgresql+psycopg2://bgd@127.0.0.1:5432/bgd?sslmode=disable
        \(connection)
        storages:
        \(storage)
        instances:
          - name: ""
            services:
              - !cas
                storage: *store
        """
    }

    @Test func sqlIndexOverSQLStorageSharesOneConnection() throws {
        let configuration = try parse(config(
            connection: """
                connection-timeout: 2
                lock-timeout: 0
                statement-timeout: 12
                pool-size: 3
                max-overflow: 1
                pool-timeout: !expand-vars "${POOL_TIMEOUT}"
                pool-pre-ping: false
                connect-args: {options: "-c search_path=cas", application_name: strata, connect_timeout: 4}
            """,
            storage: """
              - !sql-storage &blobs
                sql: *sql
                sql-ro: *sql
              - !sql-index &store
                storage: *blobs
                sql: *sql
                window-size: 500
                inclause-limit: 200
                max-inline-blob-size: 1K
                refresh-accesstime-older-than: 60.5
            """))
        let index = try #require(configuration.instances.first?.cas?.store as? SQLIndex)
        let blobs = try #require((index.backingStore as? VerifyingBlobStore<SQLBlobStore>)?.backend)
        #expect(index.connection === blobs.connection)
        #expect(blobs.readConnection !== blobs.connection && blobs.readConnection.settings.readOnly)
        #expect(index.readConnection === index.connection)
        #expect(index.windowSize == 200 && index.maxInlineBlobSize == 1024 && index.refreshAccessTimeOlderThan == .milliseconds(60_500))
        let settings = index.connection.settings
        // connect-args' connect_timeout (4) overrides connection-timeout (2); pool-timeout is its own.
        #expect(settings.connectionTimeout == .seconds(4) && settings.poolTimeout == .milliseconds(7500))
        #expect(settings.statementTimeout == .seconds(12))
        #expect(settings.lockTimeout == nil && settings.poolSize == 3 && settings.maxOverflow == 1 && settings.keepAlive == nil)
        #expect(settings.schema == "cas" && settings.startupParameters["application_name"] == "strata")
        #expect(settings.tls == .disable && settings.username == "bgd" && settings.database == "bgd")
        // The read-write pool and the read-only pool run while the server runs.
        #expect(configuration.backgroundServices.count == 2)
    }

    @Test func defaults() throws {
        let configuration = try parse(config(storage: """
              - !sql-index &store
                storage: !disk-storage {path: /nonexistent/strata-sql-config}
                sql: *sql
            """))
        let index = try #require(configuration.instances.first?.cas?.store as? SQLIndex)
        #expect(index.windowSize == 1000 && index.maxInlineBlobSize == 0 && index.refreshAccessTimeOlderThan == .zero)
        #expect(index.backingStore.unwrapped is DiskBlobStore)
        let settings = index.connection.settings
        #expect(settings.connectionTimeout == .seconds(5) && settings.poolTimeout == .seconds(5))
        #expect(settings.lockTimeout == .seconds(5) && settings.poolSize == 5 && settings.maxOverflow == 10)
        #expect(settings.statementTimeout == .seconds(10))
        #expect(settings.keepAlive != nil && !settings.readOnly)
        #expect(configuration.backgroundServices.count == 1)

        let storageOnly = try parse(config(storage: "  - !sql-storage &store\n    sql: *sql\n"))
        let store = try #require((storageOnly.instances.first?.cas?.store as? VerifyingBlobStore<SQLBlobStore>)?.backend)
        #expect(store.maximumBlobSize == 64 << 20 && store.readConnection === store.connection)
    }

    @Test func errorsNameFileLineAndKey() {
        expectError(config(connection: "    pool-recycle: hourly", storage: "  - !sql-storage &store\n    sql: *sql\n"),
                    line: 7, "connections[0].pool-recycle: expected a number of seconds")
        expectError(config(connection: "    pool-size: 0", storage: "  - !sql-storage &store\n    sql: *sql\n"),
                    line: 7, "connections[0].pool-size: must be at least 1")
        expectError(config(connection: "    lock-timeout: soon", storage: "  - !sql-storage &store\n    sql: *sql\n"),
                    line: 7, "connections[0].lock-timeout: expected a number of seconds")
        expectError(config(connection: "    connect-args: {sslmode: sometimes}", storage: "  - !sql-storage &store\n    sql: *sql\n"),
                    line: 7, "sslmode=sometimes")
        expectError(config(connection: "    connect-args: {keepalives: 1}", storage: "  - !sql-storage &store\n    sql: *sql\n"),
                    line: 7, "unknown option \"keepalives\"")
        expectError(config(storage: "  - !sql-storage &store\n    sql: *sql\n    prefix: x\n"),
                    line: 11, "storages[0].prefix: unknown option \"prefix\"")
        expectError(config(storage: "  - !sql-index &store\n    sql: *sql\n"), line: 9, "!sql-index needs a storage")
        expectError(config(storage: "  - !sql-index &store\n    sql: *sql\n    storage: !lru-storage {size: 1M}\n    max-inline-blob-size: 8M\n"),
                    line: 12, "storages[0].max-inline-blob-size: must be at most")
        expectError(config(storage: "  - !sql-storage &store\n    sql: !lru-storage {size: 1M}\n"),
                    line: 10, "expected !sql-connection")
        expectError("""
            server:
              - !channel
                address: "127.0.0.1:50051"
            connections:
              - !sql-connection
                connection-string: mysql://bgd@db/bgd
            instances: [{name: "", services: []}]
            """, line: 6, "connections[0].connection-string: connection string \"mysql://bgd@db/bgd\": Strata's SQL backends use PostgreSQL only")
    }
}
