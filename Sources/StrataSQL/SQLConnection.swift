import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import StrataCore
import Synchronization

/// A pool of connections to one PostgreSQL database (`!sql-connection`), shared by the SQL storages and
/// indexes that name it.
///
/// It owns a `PostgresClient`, whose `run()` must be running while the server runs: the config builder
/// registers this object as a background service. Every operation is bounded: waiting for a connection
/// by `poolTimeout`, a statement by `statementTimeout` (after which the connection is closed, which is
/// the only way to stop a query postgres-nio has sent), both shortened to the client's deadline
/// (`RequestDeadline`). A database that cannot be reached or hangs therefore answers UNAVAILABLE in
/// bounded time, and the pool reconnects by itself when the database is back.
///
/// A statement that timed out says the path to the database hung; the pool's other connections, opened
/// before, went through the same path and would each cost a caller another timeout. They are closed
/// unused when next leased, so after a recovery calls run at once on new connections.
public final class SQLConnection: Service, Sendable {
    public struct Settings: Sendable, Equatable {
        public enum TLSMode: String, Sendable, Equatable {
            case disable, prefer, require, verifyCA = "verify-ca", verifyFull = "verify-full"
        }

        public enum Endpoint: Sendable, Equatable {
            case tcp(host: String, port: Int)
            case unixSocket(path: String)
        }

        public var endpoint: Endpoint
        public var username: String
        public var password: String?
        public var database: String?
        public var tls: TLSMode = .prefer
        /// Run-time parameters sent at connection start-up (libpq's `options=-c name=value`,
        /// `application_name`, and `lock_timeout`).
        public var startupParameters: [String: String] = [:]
        /// Connections kept for reuse; with `maxOverflow`, the most open at once.
        public var poolSize = 5
        public var maxOverflow = 10
        /// Bound on opening one TCP connection.
        public var connectionTimeout: Duration = .seconds(5)
        /// Bound on waiting for a free connection from the pool (also what an outage costs a caller).
        public var poolTimeout: Duration = .seconds(5)
        /// Bound on one statement once sent (a 64 MiB blob insert on a slow link included); also how long
        /// a hung database keeps a caller without a deadline of its own waiting.
        public var statementTimeout: Duration = .seconds(10)
        /// Bound on waiting for a row lock inside PostgreSQL (`SET lock_timeout`); nil: no bound.
        public var lockTimeout: Duration? = .seconds(5)
        /// Idle connections run `SELECT 1` this often so a dead one is found before it is leased.
        public var keepAlive: Duration? = .seconds(30)
        /// Connects with `default_transaction_read_only` (`sql-ro`): writes fail in the database.
        public var readOnly = false

        public init(endpoint: Endpoint, username: String, password: String? = nil, database: String? = nil) {
            self.endpoint = endpoint
            self.username = username
            self.password = password
            self.database = database
        }

        /// The schema Strata's tables live in: the first entry of a `search_path` given as a start-up
        /// parameter, else PostgreSQL's default (`public`).
        public var schema: String? {
            guard let path = startupParameters["search_path"] else { return nil }
            let first = path.split(separator: ",").first?.trimmingCharacters(in: .whitespaces) ?? ""
            let unquoted = first.hasPrefix("\"") && first.hasSuffix("\"") && first.count >= 2
                ? String(first.dropFirst().dropLast()) : first
            return unquoted.isEmpty ? nil : unquoted
        }

        /// `user@host:port/database`, never the password: for messages and logs.
        public var displayName: String {
            let place: String
            switch endpoint {
            case .tcp(let host, let port): place = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unixSocket(let path): place = path
            }
            return "\(username)@\(place)/\(database ?? username)"
        }
    }

    public let settings: Settings
    let client: PostgresClient
    let logger: Logger
    private let migrated = Mutex(false)
    let staleConnections = StaleConnections()

    public init(settings: Settings, logger: Logger = Logger(label: "strata.sql")) {
        self.settings = settings
        self.logger = logger
        var configuration: PostgresClient.Configuration
        switch settings.endpoint {
        case .tcp(let host, let port):
            configuration = .init(
                host: host, port: port, username: settings.username, password: settings.password,
                database: settings.database, tls: Self.tls(settings.tls))
        case .unixSocket(let path):
            configuration = .init(
                unixSocketPath: path, username: settings.username, password: settings.password,
                database: settings.database)
        }
        configuration.options.connectTimeout = settings.connectionTimeout
        configuration.options.maximumConnections = max(1, settings.poolSize + settings.maxOverflow)
        // Connections beyond the pool size close when idle a while, like SQLAlchemy's overflow.
        configuration.options.minimumConnections = 0
        configuration.options.connectionIdleTimeout = .seconds(60)
        configuration.options.keepAliveBehavior = settings.keepAlive.map {
            PostgresClient.Configuration.Options.KeepAliveBehavior(frequency: $0)
        }
        configuration.options.additionalStartupParameters = Self.startupParameters(settings)
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
    }

    /// Parses a SQLAlchemy-style connection string; see `SQLConnectionString`.
    public convenience init(connectionString: String, logger: Logger = Logger(label: "strata.sql")) throws(StrataError) {
        self.init(settings: try SQLConnectionString.parse(connectionString), logger: logger)
    }

    /// Runs the pool until cancelled or until graceful shutdown.
    public func run() async {
        await client.run()
    }

    /// What every connection sends at start-up: the configured parameters, the lock timeout, read-only.
    static func startupParameters(_ settings: Settings) -> [(String, String)] {
        var parameters = settings.startupParameters
        if let lockTimeout = settings.lockTimeout {
            parameters["lock_timeout"] = "\(lockTimeout.milliseconds)ms"
        }
        if settings.readOnly { parameters["default_transaction_read_only"] = "on" }
        return parameters.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    private static func tls(_ mode: Settings.TLSMode) -> PostgresClient.Configuration.TLS {
        guard let (configuration, required) = tlsConfiguration(mode) else { return .disable }
        return required ? .require(configuration) : .prefer(configuration)
    }

    /// libpq semantics: prefer and require encrypt without checking the certificate, verify-ca checks
    /// the chain only, verify-full checks the chain and the host name. Nil: no TLS.
    static func tlsConfiguration(_ mode: Settings.TLSMode) -> (configuration: TLSConfiguration, required: Bool)? {
        var unverified = TLSConfiguration.makeClientConfiguration()
        unverified.certificateVerification = .none
        switch mode {
        case .disable: return nil
        case .prefer: return (unverified, false)
        case .require: return (unverified, true)
        case .verifyCA:
            var chainOnly = TLSConfiguration.makeClientConfiguration()
            chainOnly.certificateVerification = .noHostnameVerification
            return (chainOnly, true)
        case .verifyFull: return (.makeClientConfiguration(), true)
        }
    }


    // MARK: Migrations

    /// Brings Strata's tables up to date (idempotent; safe from several servers at once). Returns the
    /// versions it applied, empty when the schema was current.
    @discardableResult
    public func migrate() async throws -> [Int] {
        guard !settings.readOnly else {
            throw StrataError.internal("SQL \(settings.displayName): a read-only connection (sql-ro) cannot run migrations")
        }
        // A migration may rewrite a large table and waits for other servers migrating at once: it gets
        // minutes, not the bound of a request's statement.
        let applied = try await withConnection("migrating the schema", statementTimeout: max(settings.statementTimeout, Self.migrationTimeout)) { connection in
            try await SQLMigrations.apply(on: connection, schema: self.settings.schema, logger: self.logger)
        }
        migrated.withLock { $0 = true }
        return applied
    }

    /// How long `migrate` may take at least, whatever `statementTimeout` says.
    static let migrationTimeout: Duration = .seconds(300)

    /// Runs the migrations once per process, before the first use by a store.
    func ensureMigrated() async throws {
        if migrated.withLock({ $0 }) { return }
        try await migrate()
    }

    // MARK: Bounded operations

    /// Leases a connection (waiting at most `poolTimeout`) and runs `body` on it (at most
    /// `statementTimeout`, or the longer bound given). Errors become `StrataError`s naming `what` and this database.
    ///
    /// The caller is answered when a deadline passes even if postgres-nio has not given up yet (a
    /// query on a connection whose server vanished may never complete): the work goes on in its own
    /// task, the lease request is cancelled, and a late connection is closed.
    func withConnection<Result: Sendable>(
        _ what: String, statementTimeout: Duration? = nil, _ body: @escaping @Sendable (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        let leased = LeaseState()
        var configured = self.settings
        if let statementTimeout { configured.statementTimeout = statementTimeout }
        var bounded = configured
        bounded.poolTimeout = RequestDeadline.bounded(bounded.poolTimeout)
        bounded.statementTimeout = RequestDeadline.bounded(bounded.statementTimeout)
        let settings = bounded
        // Timing out on the configured bound says the database hung; on the client's shorter deadline,
        // only that the client gave up (its statement is stopped, the other connections are kept).
        let timeoutMeansHang = bounded.statementTimeout >= configured.statementTimeout
        let client = self.client
        let stale = self.staleConnections
        do {
            return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Result, any Error>) in
                let answer = OneAnswer(continuation)
                let leaseTimer = Task {
                    try? await Task.sleep(for: settings.poolTimeout)
                    guard !Task.isCancelled, leased.giveUpIfNotLeased() else { return }
                    answer.give(.failure(StrataError.unavailable(
                        "SQL \(settings.displayName): no database connection within \(Self.seconds(settings.poolTimeout)) "
                            + "while \(what) (the database is unreachable or the pool of \(settings.poolSize + settings.maxOverflow) is busy)")))
                    leased.cancelWork()
                }
                leased.setWork(Task {
                    do {
                        let result = try await Self.leasingTrusted(client, stale) { connection in
                            guard leased.markLeased() else { throw CancellationError() }
                            leaseTimer.cancel()
                            let statementTimer = Task {
                                try? await Task.sleep(for: settings.statementTimeout)
                                guard !Task.isCancelled else { return }
                                leased.markTimedOut()
                                if timeoutMeansHang { stale.hangDetected() }
                                answer.give(.failure(StrataError.unavailable(
                                    "SQL \(settings.displayName): \(what) took longer than \(Self.seconds(settings.statementTimeout)); the connection was closed")))
                                try? await connection.close()
                            }
                            defer { statementTimer.cancel() }
                            return try await body(connection)
                        }
                        answer.give(.success(result))
                    } catch {
                        answer.give(.failure(error))
                    }
                    leaseTimer.cancel()
                })
            }
        } catch {
            throw Self.strataError(error, what: what, settings: settings, leased: leased)
        }
    }

    /// Leases connections until one opened after the last hang, closing the older ones unused (the
    /// pool replaces them with new connections).
    private static func leasingTrusted<Result: Sendable>(
        _ client: PostgresClient, _ stale: StaleConnections,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        while true {
            do {
                return try await client.withConnection { connection in
                    if stale.isStale(connection.id) {
                        try? await connection.close()
                        throw StaleConnectionClosed()
                    }
                    return try await body(connection)
                }
            } catch is StaleConnectionClosed {
                try Task.checkCancellation()
            }
        }
    }

    private struct StaleConnectionClosed: Error {}

    static func seconds(_ duration: Duration) -> String {
        let millis = duration.milliseconds
        return millis % 1000 == 0 ? "\(millis / 1000) s" : "\(Double(millis) / 1000) s"
    }

    /// Maps what postgres-nio and PostgreSQL report onto the code a REAPI client should see.
    static func strataError(_ error: any Error, what: String, settings: Settings, leased: LeaseState) -> StrataError {
        let place = "SQL \(settings.displayName)"
        if let error = error as? StrataError { return error }
        if let error = error as? PostgresTransactionError {
            if let inner = error.closureError ?? error.beginError ?? error.commitError {
                return strataError(inner, what: what, settings: settings, leased: leased)
            }
            return .internal("\(place): \(what): \(String(reflecting: error))")
        }
        if error is CancellationError { return StrataError(.cancelled, "\(place): \(what) was cancelled") }
        // postgres-nio's pool reports "could not connect for a while" with an error type from a module
        // it does not export (ConnectionPoolError: circuit breaker tripped).
        if String(reflecting: type(of: error)).hasSuffix("ConnectionPoolError") {
            return .unavailable("\(place): cannot connect to the database while \(what) (\(error))")
        }
        if let error = error as? PSQLError {
            switch error.code {
            case .server:
                let state = error.serverInfo?[.sqlState] ?? ""
                let message = error.serverInfo?[.message] ?? "server error"
                let detail = "\(place): \(what): \(message) (SQLSTATE \(state))"
                switch state {
                case _ where state.hasPrefix("08"), "57P01", "57P02", "57P03", "53300", "55P03", "40001", "40P01", "57014":
                    // Connection loss, shutdown, too many connections, lock timeout, serialization or deadlock:
                    // a retry can succeed.
                    return .unavailable(detail)
                case _ where state.hasPrefix("53"):
                    return .resourceExhausted(detail)
                default:
                    return .internal(detail)
                }
            case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed,
                 .queryCancelled, .sslUnsupported, .failedToAddSSLHandler:
                let reason = error.underlying.map { String(describing: $0) } ?? "\(error.code)"
                return .unavailable("\(place): lost or could not open the database connection while \(what) (\(reason))")
            default:
                return .internal("\(place): \(what): unexpected reply from PostgreSQL (\(error.code))")
            }
        }
        if error is NIOConnectionError || error is ChannelError || error is IOError {
            return .unavailable("\(place): cannot reach the database while \(what) (\(error))")
        }
        return .internal("\(place): \(what): \(String(reflecting: error))")
    }
}

/// Which pooled connections predate the last hang (a statement that timed out): those are closed
/// instead of used, since the path they went through hung.
final class StaleConnections: Sendable {
    private struct State {
        /// When each connection was first leased (postgres-nio opens one for a lease, so about when it
        /// was opened).
        var firstLeased: [PostgresConnection.ID: ContinuousClock.Instant] = [:]
        var lastHang: ContinuousClock.Instant?
    }

    private let state = Mutex(State())

    func hangDetected() {
        state.withLock { $0.lastHang = .now }
    }

    /// Whether the connection was in use before the last hang; it is then forgotten, as it is closed.
    func isStale(_ id: PostgresConnection.ID) -> Bool {
        let now = ContinuousClock.now
        return state.withLock { state in
            guard let first = state.firstLeased[id] else {
                state.firstLeased[id] = now
                // Connections come and go (overflow ones close when idle): forget the oldest ids, which
                // the pool numbers in order; a forgotten live one only escapes one check.
                if state.firstLeased.count > 1024 {
                    for old in state.firstLeased.keys.sorted().prefix(512) { state.firstLeased[old] = nil }
                }
                return false
            }
            guard let hang = state.lastHang, first <= hang else { return false }
            state.firstLeased[id] = nil
            return true
        }
    }
}

/// Whether a lease arrived before the pool timeout gave up on it; the two race, so the loser backs off.
final class LeaseState: Sendable {
    private struct State {
        var leased = false
        var gaveUp = false
        var timedOut = false
    }

    private let state = Mutex(State())

    /// False when the caller already gave up: the late connection is released unused.
    func markLeased() -> Bool {
        state.withLock { state in
            guard !state.gaveUp else { return false }
            state.leased = true
            return true
        }
    }

    func giveUpIfNotLeased() -> Bool {
        state.withLock { state in
            guard !state.leased else { return false }
            state.gaveUp = true
            return true
        }
    }

    private let work = Mutex<Task<Void, Never>?>(nil)

    func setWork(_ task: Task<Void, Never>) { work.withLock { $0 = task } }
    func cancelWork() { work.withLock { $0 }?.cancel() }

    func markTimedOut() { state.withLock { $0.timedOut = true } }
    var timedOut: Bool { state.withLock { $0.timedOut } }
}

/// Resumes a continuation with the first answer given; later ones are dropped.
final class OneAnswer<Value: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<Value, any Error>?>

    init(_ continuation: CheckedContinuation<Value, any Error>) {
        self.continuation = Mutex(continuation)
    }

    func give(_ result: Result<Value, any Error>) {
        let waiting = continuation.withLock { continuation in
            defer { continuation = nil }
            return continuation
        }
        waiting?.resume(with: result)
    }
}
