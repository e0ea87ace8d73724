import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TCP proxy on 127.0.0.1 in front of a real service (S3, PostgreSQL, Redis), for tests of a backend
/// that hangs: forwarding, it passes bytes both ways; after `hang()`, every connection (open or new) is
/// accepted and answered nothing, as a service that stopped responding or a network path that went
/// silent. `forward()` lets new connections through again, while those that hung stay dead, as after a
/// network partition: a client recovers only by replacing them.
///
/// Blocking sockets on threads of its own, each polling with a short timeout, so `stop()` ends them.
public final class FaultProxy: @unchecked Sendable {
    public let port: Int
    private let targetPort: Int
    private let listener: Int32
    private let lock = NSLock()
    private var hung = false
    private var stopped = false
    private var connections: [ProxiedConnection] = []
    private let threads = DispatchGroup()
    /// Applied to each chunk the service sends before it reaches the client (to fake a reply).
    private let rewrite: (@Sendable (Data) -> Data)?

    public init(targetPort: Int, rewrite: (@Sendable (Data) -> Data)? = nil) throws {
        self.targetPort = targetPort
        self.rewrite = rewrite
        (listener, port) = try Self.listen()
        threads.enter()
        Thread { [self] in
            acceptLoop()
            threads.leave()
        }.start()
    }

    deinit { stop() }

    /// Connections open now stop forwarding for good; new ones are accepted and never answered.
    public func hang() {
        lock.withLock {
            hung = true
            for connection in connections { connection.kill() }
        }
    }

    /// New connections are forwarded again (those that hung stay dead).
    public func forward() {
        lock.withLock { hung = false }
    }

    /// Closes everything and waits for the proxy's threads to end.
    public func stop() {
        let first = lock.withLock {
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        threads.wait()
        close(listener)
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func acceptLoop() {
        while !isStopped {
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            let connection: ProxiedConnection? = lock.withLock {
                let connection = ProxiedConnection(client: client, upstream: hung ? -1 : Self.connect(port: targetPort))
                connections.append(connection)
                return connection
            }
            guard let connection else { continue }
            threads.enter()
            Thread { [self] in
                pump(connection)
                threads.leave()
            }.start()
        }
    }

    private func pump(_ connection: ProxiedConnection) {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        defer { connection.closeAll() }
        let upstream = connection.upstream
        while !isStopped {
            let dead = connection.isDead
            var pollers = [pollfd(fd: connection.client, events: Int16(POLLIN), revents: 0)]
            if !dead { pollers.append(pollfd(fd: upstream, events: Int16(POLLIN), revents: 0)) }
            guard poll(&pollers, nfds_t(pollers.count), 100) > 0 else { continue }
            if pollers[0].revents != 0 {
                let count = read(connection.client, &buffer, buffer.count)
                if count <= 0 { return }
                // A dead connection swallows what the client sends, so the client's writes never block.
                if dead || connection.isDead { continue }
                if !Self.sendAll(upstream, Data(buffer[0..<count])) { return }
            }
            if pollers.count > 1, pollers[1].revents != 0 {
                let count = read(upstream, &buffer, buffer.count)
                if connection.isDead { continue }
                if count <= 0 { return }
                var data = Data(buffer[0..<count])
                if let rewrite { data = rewrite(data) }
                if !Self.sendAll(connection.client, data) { return }
            }
        }
    }

    private static func sendAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let sent = send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
                if sent <= 0 { return false }
                offset += sent
            }
            return true
        }
    }

    private static func listen() throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(fd, raw, length) == 0 && Glibc.listen(fd, 128) == 0 && getsockname(fd, raw, &length) == 0
            }
        }
        guard fd >= 0, ok else {
            close(fd)
            throw MissingServiceError("the fault proxy cannot listen on 127.0.0.1: errno \(errno)")
        }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    private static func connect(port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = loopback(port: port)
        let ok = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                Glibc.connect(fd, raw, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        if !ok {
            close(fd)
            return -1
        }
        return fd
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return address
    }
}

/// One client connection and its connection to the service (-1 when it never had one).
private final class ProxiedConnection: @unchecked Sendable {
    let client: Int32
    let upstream: Int32
    private let lock = NSLock()
    private var dead: Bool

    init(client: Int32, upstream: Int32) {
        self.client = client
        self.upstream = upstream
        self.dead = upstream < 0
    }

    var isDead: Bool { lock.withLock { dead } }

    /// Stops forwarding for good: the service's side is shut, the client's left open and silent.
    func kill() {
        lock.withLock {
            if !dead, upstream >= 0 { shutdown(upstream, Int32(SHUT_RDWR)) }
            dead = true
        }
    }

    func closeAll() {
        // Dead first, under the lock: a later `kill` must not shut a descriptor number reused since.
        lock.withLock { dead = true }
        close(client)
        if upstream >= 0 { close(upstream) }
    }
}
