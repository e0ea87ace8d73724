import CHiredis
import Foundation
import Logging
import NIOPosix
import StrataCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Where and how to reach one Redis server.
public struct RedisConfiguration: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var password: String?
    public var database: Int
    /// Further attempts after a connection-level failure (refused, reset, closed), each on a fresh
    /// connection. A timeout is not retried: a server that stopped answering would only time out again.
    public var retries: Int
    /// Connections, and threads making blocking calls on them.
    public var poolSize: Int
    /// Bound on connecting and on each command's round trip.
    public var timeout: Duration

    public init(
        host: String = "localhost", port: Int = 6379, password: String? = nil, database: Int = 0,
        retries: Int = 3, poolSize: Int = 8, timeout: Duration = .seconds(5)
    ) {
        self.host = host
        self.port = port
        self.password = password
        self.database = database
        self.retries = retries
        self.poolSize = poolSize
        self.timeout = timeout
    }

    public var endpoint: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A reply as hiredis decoded it.
public enum RedisReply: Sendable, Hashable {
    case bulk(Data)
    case status(String)
    case integer(Int64)
    case null
    case array([RedisReply])
    case error(String)

    public var string: String? {
        switch self {
        case .bulk(let data): String(decoding: data, as: UTF8.self)
        case .status(let text): text
        default: nil
        }
    }

    public var integer: Int64? {
        switch self {
        case .integer(let value): value
        case .bulk, .status: string.flatMap { Int64($0) }
        default: nil
        }
    }

    public var array: [RedisReply]? {
        if case .array(let elements) = self { return elements }
        return nil
    }
}

/// A Lua script run atomically by the server, called by its SHA1 (`EVALSHA`) once loaded.
public struct RedisScript: Sendable, Hashable {
    public let source: String

    public init(_ source: String) { self.source = source }
}

/// One command of a pipeline: plain arguments, or a script call with its keys and arguments.
public struct RedisCommand: Sendable {
    enum Kind: Sendable {
        case plain([Data])
        case script(RedisScript, keys: [Data], arguments: [Data])
    }

    let kind: Kind

    public init(_ arguments: [String]) { kind = .plain(arguments.map { Data($0.utf8) }) }
    public init(_ arguments: String...) { self.init(arguments) }
    public init(binary arguments: [Data]) { kind = .plain(arguments) }

    public static func script(_ script: RedisScript, keys: [String], arguments: [String]) -> RedisCommand {
        RedisCommand(kind: .script(script, keys: keys.map { Data($0.utf8) }, arguments: arguments.map { Data($0.utf8) }))
    }

    private init(kind: Kind) { self.kind = kind }

    /// The command's name, for error messages.
    var name: String {
        switch kind {
        case .plain(let arguments): arguments.first.map { String(decoding: $0, as: UTF8.self).uppercased() } ?? "(empty)"
        case .script: "EVALSHA"
        }
    }
}

/// A client for one Redis server over hiredis: a pool of blocking connections used from a dedicated
/// thread pool with one thread per connection, so a slow server never blocks Swift's cooperative pool.
///
/// A connection that fails is freed and a later call opens a new one, so the client recovers by itself
/// when the server comes back. Commands sent in one call are pipelined: written together, answered in
/// order. A retried call runs all its commands again, so calls must be idempotent (the index's are).
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    private let threadPool: NIOThreadPool
    private let idle: Mutex<[RedisConnection]> = Mutex([])
    /// SHA1s of loaded scripts, by source: learnt from SCRIPT LOAD so no hashing code is needed here.
    private let scriptHashes: Mutex<[String: String]> = Mutex([:])
    private let isShutDown = Atomic<Bool>(false)
    /// Whether the threads were started: by the first call, not by `init`, so that loading a
    /// configuration (which builds its clients) starts nothing. Changed with `isShutDown` under this
    /// lock: a pool is never started after its shutdown.
    private let started = Mutex(false)
    private let logger: Logger

    public init(_ configuration: RedisConfiguration, logger: Logger = Logger(label: "strata.redis")) {
        precondition(configuration.poolSize > 0, "a Redis pool needs at least one connection")
        self.configuration = configuration
        self.logger = logger
        threadPool = NIOThreadPool(numberOfThreads: configuration.poolSize)
    }

    /// Whether a call has started the client's threads.
    public var isRunning: Bool { started.withLock { $0 } && !isShutDown.load(ordering: .acquiring) }

    /// The thread pool, started on first use (a pool shut down stays down: calls then fail).
    private var runningPool: NIOThreadPool {
        started.withLock { started in
            if !started && !isShutDown.load(ordering: .acquiring) {
                // hiredis writes with write(2): a write after the server reset the connection must fail
                // with EPIPE rather than kill the process. Linux has no per-socket switch; NIO ignores
                // SIGPIPE process-wide for the same reason, so this changes nothing for the server.
                signal(SIGPIPE, SIG_IGN)
                threadPool.start()
                started = true
            }
        }
        return threadPool
    }

    deinit {
        if !isShutDown.load(ordering: .acquiring) { threadPool.shutdownGracefully { _ in } }
    }

    /// Stops the threads and closes the connections; later calls answer UNAVAILABLE.
    public func shutdown() async {
        guard !started.withLock({ _ in isShutDown.exchange(true, ordering: .acquiringAndReleasing) }) else { return }
        try? await threadPool.shutdownGracefully()
        idle.withLock { $0.removeAll() }
    }

    public var endpoint: String { configuration.endpoint }

    /// Sends one command and returns its reply; an error reply throws.
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RedisReply {
        try checked(try await pipeline([command])[0], command)
    }

    @discardableResult
    public func send(_ arguments: String...) async throws -> RedisReply {
        try await send(RedisCommand(arguments))
    }

    /// Runs a script atomically; an error reply throws.
    @discardableResult
    public func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws -> RedisReply {
        let command = RedisCommand.script(script, keys: keys, arguments: arguments)
        return try checked(try await pipeline([command])[0], command)
    }

    /// Sends the commands in one round trip and returns their replies in order. Error replies are
    /// returned, not thrown (`checked` turns one into a StrataError); a connection failure, after the
    /// retries, throws UNAVAILABLE naming the server.
    public func pipeline(_ commands: [RedisCommand]) async throws -> [RedisReply] {
        if commands.isEmpty { return [] }
        // Short and bounded pauses: a restarting server gets a moment, a dead one fails the call fast.
        let policy = RetryPolicy(
            maxAttempts: max(0, configuration.retries) + 1, baseDelay: .milliseconds(50), maxDelay: .milliseconds(800),
            budget: configuration.timeout)
        var lastFailure = ""
        var attempts = 0
        do {
            return try await policy.run(isTransient: { ($0 as? ConnectionFailure)?.isRetryable == true }) { attempt in
                attempts = attempt
                // Task-locals do not reach the pool's threads: the bound is computed here.
                let timeout = RequestDeadline.bounded(configuration.timeout)
                do {
                    return try await runningPool.runIfActive { try self.runBlocking(commands, timeout: timeout) }
                } catch let failure as ConnectionFailure {
                    lastFailure = failure.description
                    if case .io(_, timedOut: true) = failure {
                        // The server or the path to it went silent: the idle connections went through
                        // it too and would each time out once more. New ones are opened instead.
                        idle.withLock { $0.removeAll() }
                    }
                    throw failure
                }
            }
        } catch let failure as ConnectionFailure {
            switch failure {
            case .io(let message, timedOut: true):
                throw StrataError.unavailable(
                    "Redis at \(endpoint) did not answer within \(RequestDeadline.bounded(configuration.timeout)): \(message)")
            case .io:
                throw StrataError.unavailable(
                    "Redis at \(endpoint) is unavailable (\(attempts) attempt\(attempts == 1 ? "" : "s")): \(lastFailure)")
            case .refused(let message):
                throw StrataError.internal("Redis at \(endpoint): \(message)")
            }
        } catch is CancellationError {
            // The pool cancels queued work when it shuts down, as it does a cancelled task's.
            if isShutDown.load(ordering: .acquiring) {
                throw StrataError.unavailable("the client of Redis at \(endpoint) is shut down")
            }
            throw StrataError(.cancelled, "the request was cancelled while waiting for Redis at \(endpoint)")
        }
    }

    /// The reply, or the StrataError a client should see for an error reply.
    public func checked(_ reply: RedisReply, _ command: RedisCommand) throws -> RedisReply {
        guard case .error(let message) = reply else { return reply }
        let code = message.prefix { $0 != " " }
        switch code {
        case "NOAUTH", "WRONGPASS", "NOPERM":
            throw StrataError.internal("Redis at \(endpoint) refused \(command.name): \(message) (check the password)")
        case "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN":
            throw StrataError.unavailable("Redis at \(endpoint) cannot serve \(command.name) now: \(message)")
        case "OOM":
            throw StrataError.resourceExhausted("Redis at \(endpoint) is out of memory: \(message)")
        default:
            throw StrataError.internal("Redis at \(endpoint) answered \(command.name) with an error: \(message)")
        }
    }

    // MARK: Blocking part, on the thread pool

    private func runBlocking(_ commands: [RedisCommand], timeout: Duration) throws(ConnectionFailure) -> [RedisReply] {
        let connection: RedisConnection
        if let pooled = idle.withLock({ $0.popLast() }) { connection = pooled } else { connection = try connect(timeout: timeout) }
        do {
            try connection.setTimeout(timeout)
            let replies = try execute(commands, on: connection)
            idle.withLock { $0.append(connection) }
            return replies
        } catch {
            // Dropping the connection frees it: its stream may hold half a reply.
            logger.warning("Redis at \(endpoint): dropping a connection: \(error)")
            throw error
        }
    }

    private func connect(timeout: Duration) throws(ConnectionFailure) -> RedisConnection {
        guard let context = redisConnectWithTimeout(configuration.host, Int32(configuration.port), timeval(timeout)) else {
            throw .io("cannot allocate a hiredis context", timedOut: false)
        }
        let connection = RedisConnection(context)
        if context.pointee.err != 0 {
            throw .io("cannot connect: \(connection.errorMessage)", timedOut: connection.timedOut)
        }
        try connection.setTimeout(timeout)
        if let password = configuration.password {
            let reply = try connection.roundTrip([Data("AUTH".utf8), Data(password.utf8)])
            if case .error(let message) = reply { throw .refused("AUTH failed: \(message)") }
        }
        if configuration.database != 0 {
            let reply = try connection.roundTrip([Data("SELECT".utf8), Data(String(configuration.database).utf8)])
            if case .error(let message) = reply { throw .refused("SELECT \(configuration.database) failed: \(message)") }
        }
        return connection
    }

    private func execute(_ commands: [RedisCommand], on connection: RedisConnection) throws(ConnectionFailure) -> [RedisReply] {
        var hashes: [String: String] = scriptHashes.withLock { $0 }
        for case .script(let script, _, _) in commands.map(\.kind) where hashes[script.source] == nil {
            let reply = try connection.roundTrip([Data("SCRIPT".utf8), Data("LOAD".utf8), Data(script.source.utf8)])
            // A script that does not compile comes back as an error reply from EVAL below.
            guard let hash = reply.string, case .bulk = reply else { continue }
            hashes[script.source] = hash
            scriptHashes.withLock { $0[script.source] = hash }
        }
        for command in commands {
            try connection.append(arguments(command, hashes: hashes))
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands { replies.append(try connection.readReply()) }

        // After a server restart its script cache is empty: run those again with their source, which
        // also loads them for the next EVALSHA.
        let unknown = replies.indices.filter { index in
            if case .error(let message) = replies[index], message.hasPrefix("NOSCRIPT") { return true }
            return false
        }
        if !unknown.isEmpty {
            for index in unknown { try connection.append(arguments(commands[index], hashes: [:])) }
            for index in unknown { replies[index] = try connection.readReply() }
        }
        return replies
    }

    /// The argv of `command`: EVALSHA when the script's SHA1 is known, else EVAL with its source.
    private func arguments(_ command: RedisCommand, hashes: [String: String]) -> [Data] {
        switch command.kind {
        case .plain(let arguments):
            return arguments
        case .script(let script, let keys, let arguments):
            let head: [Data] = if let hash = hashes[script.source] {
                [Data("EVALSHA".utf8), Data(hash.utf8)]
            } else {
                [Data("EVAL".utf8), Data(script.source.utf8)]
            }
            return head + [Data(String(keys.count).utf8)] + keys + arguments
        }
    }
}

enum ConnectionFailure: Error, CustomStringConvertible {
    /// The connection cannot be used any more: refused, reset, closed or timed out.
    case io(String, timedOut: Bool)
    /// The server refused the connection's set-up (AUTH, SELECT): retrying would not help.
    case refused(String)

    var description: String {
        switch self {
        case .io(let message, _), .refused(let message): message
        }
    }

    /// A refused or reset connection may work again on a fresh one; a timeout is not retried: a server
    /// that stopped answering would only time out again.
    var isRetryable: Bool {
        if case .io(_, timedOut: false) = self { return true }
        return false
    }
}

/// One hiredis context, used by one thread at a time (the pool hands it out), freed when dropped.
final class RedisConnection: @unchecked Sendable {
    private let context: UnsafeMutablePointer<redisContext>

    init(_ context: UnsafeMutablePointer<redisContext>) { self.context = context }

    deinit { redisFree(context) }

    private var timeout: Duration?

    /// Bounds each later read and write on the socket (the pool's threads block on them).
    func setTimeout(_ timeout: Duration) throws(ConnectionFailure) {
        guard timeout != self.timeout else { return }
        // A zero timeval means "no timeout" to hiredis: the request's deadline passed, so wait the least.
        guard redisSetTimeout(context, timeval(max(timeout, .milliseconds(1)))) == REDIS_OK else {
            throw .io("cannot set the command timeout: \(errorMessage)", timedOut: false)
        }
        self.timeout = timeout
    }

    var errorMessage: String {
        withUnsafeBytes(of: context.pointee.errstr) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Whether the last failure was a timeout; hiredis keeps errno's text, so compare with it.
    var timedOut: Bool {
        let message = errorMessage
        return [EAGAIN, EWOULDBLOCK, ETIMEDOUT].contains { message == String(cString: strerror($0)) }
    }

    private func failure(_ what: String) -> ConnectionFailure {
        if context.pointee.err == REDIS_ERR_EOF {
            return .io("\(what): the server closed the connection", timedOut: false)
        }
        return .io("\(what): \(errorMessage)", timedOut: timedOut)
    }

    /// Queues a command in the output buffer; it is sent by the next `readReply`.
    func append(_ arguments: [Data]) throws(ConnectionFailure) {
        // One contiguous copy keeps every argument's pointer valid for the call.
        var buffer = Data(capacity: arguments.reduce(1) { $0 + $1.count })
        var offsets: [Int] = []
        offsets.reserveCapacity(arguments.count)
        for argument in arguments {
            offsets.append(buffer.count)
            buffer.append(argument)
        }
        buffer.append(0)
        let lengths = arguments.map(\.count)
        let status = buffer.withUnsafeBytes { bytes -> Int32 in
            let base = bytes.baseAddress!.assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = offsets.map { UnsafePointer(base + $0) }
            return pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    redisAppendCommandArgv(context, Int32(arguments.count), argv.baseAddress, argvlen.baseAddress)
                }
            }
        }
        guard status == REDIS_OK else { throw failure("cannot queue a command") }
    }

    /// Flushes queued commands if needed and reads the next reply.
    func readReply() throws(ConnectionFailure) -> RedisReply {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else { throw failure("no reply") }
        defer { freeReplyObject(raw) }
        return Self.decode(raw.assumingMemoryBound(to: redisReply.self))
    }

    func roundTrip(_ arguments: [Data]) throws(ConnectionFailure) -> RedisReply {
        try append(arguments)
        return try readReply()
    }

    private static func decode(_ reply: UnsafePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        func text() -> String {
            guard let str = value.str else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: str, count: value.len), as: UTF8.self)
        }
        switch value.type {
        case REDIS_REPLY_STRING:
            guard let str = value.str else { return .bulk(Data()) }
            return .bulk(Data(bytes: str, count: value.len))
        case REDIS_REPLY_STATUS: return .status(text())
        case REDIS_REPLY_ERROR: return .error(text())
        case REDIS_REPLY_INTEGER: return .integer(Int64(value.integer))
        case REDIS_REPLY_ARRAY:
            return .array((0..<value.elements).map { index in
                value.element[index].map { decode($0) } ?? .null
            })
        default: return .null
        }
    }
}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}
