#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import ServiceLifecycle
import StrataCore
import Synchronization

/// Where a StatsD output writes, as BuildGrid's `endpoint-type` and `endpoint-location` say.
public enum StatsDEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// Datagrams to `host:port`.
    case udp(host: String, port: Int)
    /// A Unix socket Strata listens on; every connected reader gets the lines (BuildGrid's `socket`).
    case socket(path: String)
    /// A file, truncated when serving starts.
    case file(path: String)
    case stdout

    public var description: String {
        switch self {
        case .udp(let host, let port): "udp \(host):\(port)"
        case .socket(let path): "socket \(path)"
        case .file(let path): "file \(path)"
        case .stdout: "stdout"
        }
    }
}

/// Sends what a `StatsDMetricsFactory` wrote to its endpoint, every `interval` and once more when
/// serving ends. The endpoint is opened by `run` (by `strata serve`), never when the configuration is
/// loaded. A failing endpoint (no StatsD server, a reader gone) loses those lines, logged at most once
/// a minute; the server goes on.
public final class StatsDWriter: Service, Sendable {
    public let factory: StatsDMetricsFactory
    public let endpoint: StatsDEndpoint
    public let interval: Duration
    private let logger: Logger
    private let warnings = WarningRateLimit(interval: .seconds(60))
    private let beforeFlushHook = Mutex<(@Sendable () -> Void)?>(nil)

    /// Run before each flush: reads the gauges, so their lines carry current values.
    public var beforeFlush: (@Sendable () -> Void)? {
        get { beforeFlushHook.withLock { $0 } }
        set { beforeFlushHook.withLock { $0 = newValue } }
    }

    /// A datagram stays below a typical path MTU (1500 less IP and UDP headers), as StatsD clients do.
    static let datagramBytes = 1432

    public init(factory: StatsDMetricsFactory, endpoint: StatsDEndpoint, interval: Duration = .seconds(1), logger: Logger) {
        self.factory = factory
        self.endpoint = endpoint
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        let output: Output
        do {
            output = try Output(endpoint)
        } catch {
            throw StrataError.unavailable("monitoring: cannot open StatsD output \(endpoint): \(error.message)")
        }
        defer { output.close() }
        logger.info("monitoring: StatsD lines to \(endpoint) every \(interval)")
        while (try? await Task.sleep(for: interval)) != nil, !Task.isShuttingDownGracefully {
            flush(output)
        }
        flush(output)
    }

    private func flush(_ output: Output) {
        beforeFlush?()
        let lines = factory.drain()
        guard !lines.isEmpty else { return }
        if let failure = output.send(lines, datagramBytes: Self.datagramBytes), warnings.admit() != nil {
            logger.warning("monitoring: StatsD output \(endpoint): \(failure)")
        }
    }

    /// An open endpoint. Writes never block: a datagram or a reader that cannot take the lines now
    /// loses them.
    final class Output: @unchecked Sendable {
        // Used by the writer's one task only.
        private let endpoint: StatsDEndpoint
        private var descriptor: CInt = -1
        private var destination: [UInt8] = []
        private var readers: [CInt] = []

        init(_ endpoint: StatsDEndpoint) throws(StrataError) {
            self.endpoint = endpoint
            switch endpoint {
            case .stdout:
                descriptor = STDOUT_FILENO
            case .file(let path):
                descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644)
                guard descriptor >= 0 else { throw .unavailable("cannot open \(path): \(Self.lastError())") }
            case .udp(let host, let port):
                var hints = addrinfo()
                hints.ai_socktype = CInt(SOCK_DGRAM.rawValue)
                var info: UnsafeMutablePointer<addrinfo>?
                let status = getaddrinfo(host, String(port), &hints, &info)
                guard status == 0, let first = info else {
                    throw .unavailable("cannot resolve \(host): \(String(cString: gai_strerror(status)))")
                }
                defer { freeaddrinfo(info) }
                destination = Array(UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
                descriptor = socket(first.pointee.ai_family, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
                guard descriptor >= 0 else { throw .unavailable("cannot make a UDP socket: \(Self.lastError())") }
            case .socket(let path):
                var address = sockaddr_un()
                address.sun_family = sa_family_t(AF_UNIX)
                let bytes = Array(path.utf8)
                guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                    throw .invalidArgument("socket path \(path) is too long")
                }
                withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
                descriptor = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0)
                guard descriptor >= 0 else { throw .unavailable("cannot make a Unix socket: \(Self.lastError())") }
                // A socket file left by an earlier run would make bind fail: BuildGrid replaces it too.
                unlink(path)
                let bound = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
                guard bound == 0, listen(descriptor, 16) == 0 else {
                    let reason = Self.lastError()
                    Glibc.close(descriptor)
                    throw .unavailable("cannot listen on \(path): \(reason)")
                }
            }
        }

        static func lastError() -> String { String(cString: strerror(errno)) }

        /// Writes `lines`; a description of what failed, if anything did.
        func send(_ lines: [String], datagramBytes: Int) -> String? {
            switch endpoint {
            case .udp:
                var failure: String?
                for datagram in Self.batches(lines, maxBytes: datagramBytes) {
                    let sent = datagram.withUnsafeBytes { bytes in
                        destination.withUnsafeBytes { address in
                            sendto(descriptor, bytes.baseAddress, bytes.count, CInt(MSG_DONTWAIT),
                                   address.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(address.count))
                        }
                    }
                    if sent < 0 { failure = "sendto: \(Self.lastError())" }
                }
                return failure
            case .stdout, .file:
                let bytes = Array(lines.joined(separator: "\n").utf8) + [UInt8(ascii: "\n")]
                return Self.writeAll(descriptor, bytes) ? nil : "write: \(Self.lastError())"
            case .socket:
                acceptReaders()
                let bytes = Array(lines.joined(separator: "\n").utf8) + [UInt8(ascii: "\n")]
                readers.removeAll { reader in
                    let written = bytes.withUnsafeBytes { Glibc.send(reader, $0.baseAddress, $0.count, CInt(MSG_DONTWAIT | MSG_NOSIGNAL)) }
                    // A reader that is gone or too slow to take a flush is dropped, as it would stall the rest.
                    guard written == bytes.count else {
                        Glibc.close(reader)
                        return true
                    }
                    return false
                }
                return nil
            }
        }

        private func acceptReaders() {
            while true {
                let reader = accept(descriptor, nil, nil)
                guard reader >= 0 else { return }
                _ = fcntl(reader, F_SETFD, FD_CLOEXEC)
                readers.append(reader)
            }
        }

        /// `lines` joined by newlines into chunks of at most `maxBytes` (a longer line goes alone).
        static func batches(_ lines: [String], maxBytes: Int) -> [[UInt8]] {
            var result: [[UInt8]] = []
            var current: [UInt8] = []
            for line in lines {
                let bytes = Array(line.utf8)
                if !current.isEmpty && current.count + 1 + bytes.count > maxBytes {
                    result.append(current)
                    current = []
                }
                if !current.isEmpty { current.append(UInt8(ascii: "\n")) }
                current += bytes
            }
            if !current.isEmpty { result.append(current) }
            return result
        }

        private static func writeAll(_ descriptor: CInt, _ bytes: [UInt8]) -> Bool {
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
                if written < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += written
            }
            return true
        }

        func close() {
            for reader in readers { Glibc.close(reader) }
            readers = []
            switch endpoint {
            case .stdout: break
            case .socket(let path):
                Glibc.close(descriptor)
                unlink(path)
            case .udp, .file: Glibc.close(descriptor)
            }
        }
    }
}
