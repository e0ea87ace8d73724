import Foundation
import StrataCore
import StrataRedis
import StrataTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The shared Redis of the test run (`STRATA_TEST_REDIS`), as a client configuration.
func sharedRedisConfiguration() throws -> RedisConfiguration {
    guard let address = TestServices.redis else { throw MissingServiceError("STRATA_TEST_REDIS") }
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
        throw ConformanceFailure("STRATA_TEST_REDIS=\(address) is not host:port")
    }
    return RedisConfiguration(host: String(address[..<colon]), port: port, poolSize: 4)
}

/// Runs `body` with a client of the shared Redis, shutting the client down after.
@discardableResult
func withSharedRedis<T>(
    _ adjust: (inout RedisConfiguration) -> Void = { _ in }, _ body: (RedisClient) async throws -> T
) async throws -> T {
    var configuration = try sharedRedisConfiguration()
    adjust(&configuration)
    let client = RedisClient(configuration)
    do {
        let result = try await body(client)
        await client.shutdown()
        return result
    } catch {
        await client.shutdown()
        throw error
    }
}

/// A clock the test moves by hand, so access times are exact.
final class ManualClock: Sendable {
    private let current: Mutex<Date>

    init(_ start: Date = Date(timeIntervalSince1970: 1_700_000_000)) { current = Mutex(start) }

    var now: Date { current.withLock { $0 } }
    func set(_ date: Date) { current.withLock { $0 = date } }
    func advance(_ seconds: TimeInterval) { current.withLock { $0 += seconds } }
    var function: @Sendable () -> Date { { self.now } }
}

/// A redis-server of the test's own, on 127.0.0.1 and a free port, that the test may kill and restart.
final class PrivateRedis: @unchecked Sendable {
    let port: Int
    let extraArguments: [String]
    private var process: Process?

    init(extraArguments: [String] = []) async throws {
        port = try freePort()
        self.extraArguments = extraArguments
        try await start()
    }

    deinit { kill() }

    var configuration: RedisConfiguration { RedisConfiguration(host: "127.0.0.1", port: port, poolSize: 2) }

    func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try redisServerPath())
        process.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"] + extraArguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        // Up when it accepts a TCP connection.
        let deadline = Date() + 10
        while Date() < deadline {
            if canConnect(port: port) { return }
            guard process.isRunning else { throw ConformanceFailure("redis-server on port \(port) exited at start-up") }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ConformanceFailure("redis-server on port \(port) did not start within 10 s")
    }

    /// SIGKILL, as a crash would.
    func kill() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    func signal(_ signal: Int32) {
        if let process { Glibc.kill(process.processIdentifier, signal) }
    }
}

func redisServerPath() throws -> String {
    for directory in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] where FileManager.default.isExecutableFile(atPath: "\(directory)/redis-server") {
        return "\(directory)/redis-server"
    }
    throw ConformanceFailure("redis-server is not installed (tools/services install)")
}

func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ConformanceFailure("socket() failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else { throw ConformanceFailure("bind() failed") }
    let named = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw ConformanceFailure("getsockname() failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}

func canConnect(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}

/// Runs `operation`, expecting a StrataError with `code`; returns it and how long the call took.
@discardableResult
func expectStrataError(
    _ code: StrataError.Code, _ what: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ operation: () async throws -> Void
) async -> (error: StrataError?, seconds: Double) {
    let start = ContinuousClock.now
    do {
        try await operation()
        Issue.record("\(what) succeeded; expected \(code)", sourceLocation: sourceLocation)
        return (nil, seconds(since: start))
    } catch let error as StrataError {
        #expect(error.code == code, "\(what): \(error)", sourceLocation: sourceLocation)
        return (error, seconds(since: start))
    } catch {
        Issue.record("\(what): \(error) is not a StrataError", sourceLocation: sourceLocation)
        return (nil, seconds(since: start))
    }
}

private func seconds(since start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}
