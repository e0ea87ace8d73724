import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PostgresNIO
@testable import StrataSQL
import StrataTestSupport

/// Every test gets its own schema (through `options=-c search_path=...` in the connection string), so
/// tests run in parallel against one database; the schema is dropped at the end.
struct SQLTestDatabase {
    static func url() throws -> String {
        guard let url = TestServices.postgres else { throw MissingServiceError("STRATA_TEST_POSTGRES") }
        return url
    }

    static func uniqueSchema() -> String {
        TestServices.uniqueName("strata_test").replacingOccurrences(of: "-", with: "_")
    }

    static func settings(url: String, schema: String) throws -> SQLConnection.Settings {
        var settings = try SQLConnectionString.parse("\(url)?sslmode=disable&options=-csearch_path%3D\(schema)")
        // Small pools: many tests run at once against one server (max_connections 200).
        settings.poolSize = 2
        settings.maxOverflow = 1
        settings.poolTimeout = .seconds(60)
        return settings
    }

    /// Runs `body` with running connections to a fresh schema (and a read-only one to the same schema).
    static func with<T: Sendable>(
        schema: String = uniqueSchema(),
        _ body: @escaping @Sendable (_ connection: SQLConnection, _ readOnly: SQLConnection) async throws -> T
    ) async throws -> T {
        let settings = try settings(url: try url(), schema: schema)
        let connection = SQLConnection(settings: settings)
        var readOnlySettings = settings
        readOnlySettings.readOnly = true
        let readOnly = SQLConnection(settings: readOnlySettings)
        return try await running([connection, readOnly]) {
            do {
                let result = try await body(connection, readOnly)
                try await drop(schema, on: connection)
                return result
            } catch {
                try? await drop(schema, on: connection)
                throw error
            }
        }
    }

    /// Runs the connections' pools while `body` runs.
    static func running<T: Sendable>(_ connections: [SQLConnection], _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            for connection in connections { group.addTask { await connection.run(); return nil } }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    static func drop(_ schema: String, on connection: SQLConnection) async throws {
        try await connection.withConnection("dropping the test schema") { postgres in
            try await postgres.execute("DROP SCHEMA IF EXISTS \(unescaped: schema) CASCADE", logger: connection.logger)
        }
    }

    /// Runs one statement in the test's schema (to age access times and the like).
    static func execute(_ connection: SQLConnection, _ sql: String) async throws {
        try await connection.withConnection("test statement") { postgres in
            try await postgres.execute(PostgresQuery(unsafeSQL: sql), logger: connection.logger)
        }
    }
}

/// A PostgreSQL server of the test's own (initdb + pg_ctl in a temporary folder, 127.0.0.1 on a free
/// port), for tests that stop the database. Its calls block for seconds: make them through
/// `onOwnThread`, never on the cooperative pool. Use it through `with`, which stops and removes it
/// before returning, so no server outlives the test process.
final class PrivatePostgres: Sendable {
    /// Runs `body` with a server of its own, then stops and removes the server (awaited, whatever
    /// `body` did: a `defer` cannot await, and a detached clean-up loses the race with the process's exit).
    static func with<T: Sendable>(_ body: (PrivatePostgres) async throws -> T) async throws -> T {
        let server = try await onOwnThread { try PrivatePostgres() }
        do {
            let result = try await body(server)
            try await onOwnThread { server.remove() }
            return result
        } catch {
            try? await onOwnThread { server.remove() }
            throw error
        }
    }

    /// The postmaster's process id, from its pid file.
    func postmasterPID() throws -> Int32 {
        let text = try String(contentsOfFile: "\(folder)/data/postmaster.pid", encoding: .utf8)
        guard let line = text.split(separator: "\n").first, let pid = Int32(line) else {
            throw ProcessFailure(description: "no pid in \(folder)/data/postmaster.pid")
        }
        return pid
    }

    let folder: String
    let port: Int

    init() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("strata-pg-\(UUID().uuidString.prefix(8))").path
        port = try Self.freePort()
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        if getuid() == 0 {
            try Self.run("/bin/chown", ["postgres", folder])
        }
        try asPostgres(Self.binary("initdb"), ["-D", "\(folder)/data", "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        try start()
    }

    var url: String { "postgres://postgres@127.0.0.1:\(port)/postgres" }

    func start() throws {
        try asPostgres(Self.binary("pg_ctl"), [
            "-D", "\(folder)/data", "-l", "\(folder)/server.log", "-w", "-t", "30",
            "-o", "-p \(port) -k \(folder) -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        ])
    }

    func stop() throws {
        try asPostgres(Self.binary("pg_ctl"), ["-D", "\(folder)/data", "-m", "immediate", "-w", "stop"])
    }

    func remove() {
        try? stop()
        try? FileManager.default.removeItem(atPath: folder)
    }

    private func asPostgres(_ executable: String, _ arguments: [String]) throws {
        if getuid() == 0 {
            try Self.run("/usr/sbin/runuser", ["-u", "postgres", "--", executable] + arguments)
        } else {
            try Self.run(executable, arguments)
        }
    }

    static func binary(_ name: String) throws -> String {
        let folder = try output("/usr/bin/pg_config", ["--bindir"]).trimmingCharacters(in: .whitespacesAndNewlines)
        return "\(folder)/\(name)"
    }

    static func freePort() throws -> Int {
        let text = try output("/usr/bin/python3", [
            "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1]); s.close()",
        ])
        guard let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw ProcessFailure(description: "no free port: \(text)")
        }
        return port
    }

    struct ProcessFailure: Error, CustomStringConvertible { let description: String }

    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) throws -> String {
        try output(executable, arguments)
    }

    static func output(_ executable: String, _ arguments: [String]) throws -> String {
        // system(3) rather than Foundation's Process, which did not notice pg_ctl exit once pg_ctl had
        // started a server; output goes to a file, which the server does not hold open.
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("strata-process-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let quoted = ([executable] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        let status = system(quoted.joined(separator: " ") + " </dev/null >" + outputPath + " 2>&1")
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        guard status == 0 else {
            throw ProcessFailure(description: "\(executable) \(arguments.joined(separator: " ")) failed (\(status)): \(text)")
        }
        return text
    }
}
