import Foundation
import StrataCore
@testable import StrataSQL
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct SQLConnectionStringTests {
    @Test func parsesSQLAlchemyURLs() throws {
        let settings = try SQLConnectionString.parse(
            "postgresql+psycopg2://bgd:s%40cret@db.example:6543/cas?sslmode=require&options=-c%20search_path%3Dstrata%20-c%20statement_timeout%3D0&application_name=strata")
        #expect(settings.endpoint == .tcp(host: "db.example", port: 6543))
        #expect(settings.username == "bgd" && settings.password == "s@cret" && settings.database == "cas")
        #expect(settings.tls == .require)
        #expect(settings.startupParameters == ["search_path": "strata", "statement_timeout": "0", "application_name": "strata"])
        #expect(settings.schema == "strata")
        #expect(settings.displayName == "bgd@db.example:6543/cas")

        let plain = try SQLConnectionString.parse("postgres://postgres@127.0.0.1/strata")
        #expect(plain.endpoint == .tcp(host: "127.0.0.1", port: 5432) && plain.password == nil && plain.tls == .prefer)
        #expect(plain.schema == nil)

        let socket = try SQLConnectionString.parse("postgresql://me@/db?host=/run/postgresql&connect_timeout=3")
        #expect(socket.endpoint == .unixSocket(path: "/run/postgresql/.s.PGSQL.5432"))
        #expect(socket.connectionTimeout == .seconds(3))
    }

    @Test func refusesWhatItCannotHonour() {
        let cases: [(String, String)] = [
            ("sqlite:///tmp/bgd.db", "PostgreSQL only"),
            ("mysql://u@h/db", "PostgreSQL only"),
            ("postgresql://host/db", "names no user"),
            ("postgresql://u@h/db?sslmode=sometimes", "sslmode=sometimes"),
            ("postgresql://u@h/db?pool=3", "parameter \"pool\" is not supported"),
            ("postgresql://u@h/db?options=search_path", "expected -c name=value"),
            ("postgresql://u@h/db?host=relative", "socket folder"),
            ("postgresql://u:hunter2@h:99999/db", "port 99999"),
            ("just words", "not a URL"),
        ]
        for (text, fragment) in cases {
            do throws(StrataError) {
                _ = try SQLConnectionString.parse(text)
                Issue.record("\(text) was accepted")
            } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains(fragment), "\(text): \(error.message)")
                #expect(!error.message.contains("hunter2"), "a password leaked into \(error.message)")
            }
        }
    }
}

@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLOutageTests {
    static func settings(_ url: String, poolTimeout: Duration) throws -> SQLConnection.Settings {
        var settings = try SQLConnectionString.parse("\(url)?sslmode=disable")
        settings.connectionTimeout = .seconds(1)
        settings.poolTimeout = poolTimeout
        // Room for the first migration of a fresh cluster on a loaded machine; still well inside the
        // 30 s the outage checks allow.
        settings.statementTimeout = .seconds(15)
        settings.poolSize = 2
        settings.maxOverflow = 0
        return settings
    }

    /// Runs `operation` and returns its error code and how long it took.
    static func timed(_ operation: () async throws -> Void) async -> (StrataError.Code, Duration) {
        let (error, elapsed) = await timedError(operation)
        return (error?.code ?? .ok, elapsed)
    }

    @Test func unreachableDatabaseIsUnavailableQuickly() async throws {
        _ = try SQLTestDatabase.url()
        let closed = try ClosedLoopbackPort()  // nothing listens there, nor can start to
        let port = closed.port
        defer { withExtendedLifetime(closed) {} }
        let connection = SQLConnection(settings: try Self.settings("postgres://postgres@127.0.0.1:\(port)/strata", poolTimeout: .seconds(1)))
        let store = SQLBlobStore(connection: connection)
        try await SQLTestDatabase.running([connection]) {
            let blob = Blob.random(size: 10)
            // Strata's pool timeout answers, not postgres-nio's circuit breaker (15 s); the elapsed-time
            // bound is loose because the whole test suite shares two cores.
            let (error, elapsed) = await timedError { _ = try await store.findMissing([blob.digest]) }
            #expect(error?.code == .unavailable)
            #expect(error?.message.contains("no database connection within 1 s") == true, "\(String(describing: error))")
            #expect(elapsed < .seconds(30), "took \(elapsed)")
            let (writeCode, writeElapsed) = await Self.timed { try await store.write(blob.digest, data: blob.data) }
            #expect(writeCode == .unavailable && writeElapsed < .seconds(30))
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func outageAnswersUnavailableAndRecovers() async throws {
        _ = try SQLTestDatabase.url()
        try await PrivatePostgres.with { server in try await Self.outage(server) }
    }

    static func outage(_ server: PrivatePostgres) async throws {
        // 5 s for a connection: the schema is migrated on a server just started, with the whole suite
        // sharing two cores (2 s was seen to run out).
        let connection = SQLConnection(settings: try Self.settings(server.url, poolTimeout: .seconds(5)))
        let index = try SQLIndex(backingStore: SQLBlobStore(connection: connection), connection: connection, maxInlineBlobSize: 100)
        try await SQLTestDatabase.running([connection]) {
            let before = Blob.random(size: 1000)
            try await index.write(before.digest, data: before.data)
            #expect(try await index.readAll(before.digest) == before.data)

            try await onOwnThread { try server.stop() }
            let blob = Blob.random(size: 500)
            let operations: [(String, @Sendable () async throws -> Void)] = [
                ("findMissing", { _ = try await index.findMissing([before.digest]) }),
                ("read", { _ = try await index.readAll(before.digest) }),
                ("write", { try await index.write(blob.digest, data: blob.data) }),
                ("totals", { _ = try await index.totals() }),
                ("writeBatch", {
                    if case .failure(let error) = await index.writeBatch([(blob.digest, blob.data)])[0] { throw error }
                }),
            ]
            for (name, operation) in operations {
                let (code, elapsed) = await Self.timed(operation)
                #expect(code == .unavailable, "\(name) during the outage answered \(code)")
                #expect(elapsed < .seconds(30), "\(name) during the outage took \(elapsed)")
            }

            try await onOwnThread { try server.start() }
            let deadline = ContinuousClock.now + .seconds(90)
            var recovered = false
            while ContinuousClock.now < deadline {
                if (try? await index.findMissing([before.digest])) == [] {
                    recovered = true
                    break
                }
                try await Task.sleep(for: .milliseconds(250))
            }
            #expect(recovered, "the store did not recover after the database came back")
            try await index.write(blob.digest, data: blob.data)
            #expect(try await index.readAll(blob.digest) == blob.data)
            #expect(try await index.readAll(before.digest) == before.data)
        }
    }

    /// The private server of a test is stopped before the test returns (the test command used to
    /// leave one running after every run: it was stopped from a detached thread the exit overtook).
    @Test func privateServerIsGoneWhenTheTestReturns() async throws {
        _ = try SQLTestDatabase.url()
        let pid = try await PrivatePostgres.with { server in try server.postmasterPID() }
        // pg_ctl returns once the pid file is gone, a moment before the process is: a bounded wait
        // for that moment (a zombie awaiting its reaper counts as gone).
        let deadline = ContinuousClock.now + .seconds(10)
        while Self.isRunning(pid), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(!Self.isRunning(pid), "postmaster \(pid) still runs")
    }

    static func isRunning(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return !stat.contains(") Z ")
    }
}
