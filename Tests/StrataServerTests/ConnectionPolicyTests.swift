import Foundation
#if canImport(Glibc)
import Glibc
#endif
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

/// A plain TCP connection to the server, below gRPC and HTTP/2: what a client that never speaks, or
/// speaks and then goes silent, looks like.
private final class RawConnection: @unchecked Sendable {  // `fd` never changes; one test uses it at a time
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw StrataError.unavailable("connect failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    /// The HTTP/2 client preface and an empty SETTINGS frame: a connection that has started HTTP/2.
    func sendPreface() {
        let bytes = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    }

    /// Whether the server closed the connection within `seconds`, reading (and dropping) what it sends
    /// meanwhile, e.g. its SETTINGS and GOAWAY frames. The wait blocks a thread of its own: blocking one
    /// of Swift's few cooperative threads (two on a 2-core machine) would stall every other test of the
    /// process for as long.
    func closedByServer(within seconds: Double) async -> Bool {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: self.waitForClose(within: seconds)) }.start()
        }
    }

    /// Whether the server sent something (its SETTINGS: it accepted and admitted the connection)
    /// within `seconds`. Connections reach a server's listeners in no fixed order, so a test that
    /// needs one admitted before the next waits for this.
    func receivesData(within seconds: Double) async -> Bool {
        await withCheckedContinuation { continuation in
            Thread {
                var pollfd = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
                var buffer = [UInt8](repeating: 0, count: 4096)
                let ready = poll(&pollfd, 1, Int32(seconds * 1000)) > 0 && recv(self.fd, &buffer, buffer.count, 0) > 0
                continuation.resume(returning: ready)
            }.start()
        }
    }

    /// Whether the server sent an HTTP/2 GOAWAY frame within `seconds` (on a thread of its own, as
    /// `closedByServer`): reads the server's frames, which start with its SETTINGS.
    func receivesGoAway(within seconds: Double) async -> Bool {
        await withCheckedContinuation { continuation in
            Thread {
                let end = Date().addingTimeInterval(seconds)
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while Date() < end {
                    var pollfd = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&pollfd, 1, Int32(max(1, min(200, end.timeIntervalSinceNow * 1000)))) > 0 else { continue }
                    let count = recv(self.fd, &buffer, buffer.count, 0)
                    guard count > 0 else { break }
                    received += buffer[..<count]
                    // Frames: 3 bytes length, 1 byte type (7 is GOAWAY), flags, stream id, payload.
                    while received.count >= 9 {
                        let length = Int(received[0]) << 16 | Int(received[1]) << 8 | Int(received[2])
                        if received[3] == 7 { continuation.resume(returning: true); return }
                        guard received.count >= 9 + length else { break }
                        received.removeFirst(9 + length)
                    }
                }
                continuation.resume(returning: false)
            }.start()
        }
    }

    /// The parameters of the server's first frame, its SETTINGS (RFC 9113 §6.5), or nil if none came
    /// within `seconds`. Blocks a thread of its own, as `closedByServer`.
    func serverSettings(within seconds: Double) async -> [UInt16: UInt32]? {
        await withCheckedContinuation { continuation in
            Thread {
                let end = Date().addingTimeInterval(seconds)
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while Date() < end {
                    if received.count >= 9 {
                        let length = Int(received[0]) << 16 | Int(received[1]) << 8 | Int(received[2])
                        guard received[3] == 4 else { break }
                        if received.count >= 9 + length {
                            var settings: [UInt16: UInt32] = [:]
                            for offset in stride(from: 9, to: 9 + length, by: 6) {
                                let identifier = UInt16(received[offset]) << 8 | UInt16(received[offset + 1])
                                settings[identifier] = received[(offset + 2)..<(offset + 6)].reduce(0) { $0 << 8 | UInt32($1) }
                            }
                            continuation.resume(returning: settings)
                            return
                        }
                    }
                    var pollfd = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&pollfd, 1, 200) > 0 else { continue }
                    let count = recv(self.fd, &buffer, buffer.count, 0)
                    guard count > 0 else { break }
                    received += buffer[0..<count]
                }
                continuation.resume(returning: nil)
            }.start()
        }
    }

    private func waitForClose(within seconds: Double) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < end {
            var pollfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let waitMilliseconds = Int32(max(1, min(200, end.timeIntervalSinceNow * 1000)))
            guard poll(&pollfd, 1, waitMilliseconds) > 0 else { continue }
            let count = recv(fd, &buffer, buffer.count, 0)
            if count == 0 || (count < 0 && errno == ECONNRESET) { return true }
        }
        return false
    }
}

/// Runs a server on 127.0.0.1 with `policy` and `shutdownTimeout`, calls `body` with its port and the
/// server, then shuts it down gracefully (unless `body` did) and waits for it to stop.
@discardableResult
private func withPolicyServer<Result: Sendable>(
    _ policy: ConnectionPolicy, shutdownTimeout: Duration = .seconds(30), store: LRUBlobStore = LRUBlobStore(capacityBytes: 256 << 20),
    _ body: @Sendable (_ port: Int, _ server: StrataServer) async throws -> Result
) async throws -> Result {
    let address = ListenAddress(.tcp(host: "127.0.0.1", port: 0))
    let instance = Instance(name: "", cas: .init(store: store), byteStream: .init(store: store), actionCache: nil)
    let server = try StrataServer(
        registry: InstanceRegistry([instance]), addresses: [address], eventLoops: 2,
        policies: [address: policy], shutdownTimeout: shutdownTimeout)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
        let result = try await body(port, server)
        server.beginGracefulShutdown()
        try await group.waitForAll()
        return result
    }
}

@Suite struct ConnectionPolicyTests {
    /// A socket that never sends the HTTP/2 preface is closed after the preface timeout, long before
    /// the idle timeout.
    @Test func socketWithoutPrefaceIsClosed() async throws {
        try await withPolicyServer(ConnectionPolicy(idleTimeout: .seconds(600), prefaceTimeout: .milliseconds(300))) { port, _ in
            let silent = try RawConnection(port: port)
            #expect(await silent.closedByServer(within: 20))
        }
    }

    /// A connection that sent the preface and then nothing (not even the PING the server's GOAWAY
    /// asks for) is closed once it has been silent for twice the idle timeout.
    @Test func silentConnectionIsClosed() async throws {
        try await withPolicyServer(ConnectionPolicy(idleTimeout: .milliseconds(300), prefaceTimeout: .seconds(600))) { port, _ in
            let quiet = try RawConnection(port: port)
            quiet.sendPreface()
            #expect(await quiet.closedByServer(within: 20))
        }
    }

    /// A connection older than `maxAge` (BuildGrid's grpc.max_connection_age_ms) is asked to go away
    /// (GOAWAY), long before its idle timeout; clients then reconnect, e.g. to another server behind
    /// a load balancer.
    @Test func connectionPastItsMaximumAgeIsAskedToGoAway() async throws {
        var policy = ConnectionPolicy(idleTimeout: .seconds(600), prefaceTimeout: .seconds(600))
        policy.maxAge = .milliseconds(300)
        policy.maxAgeGrace = .milliseconds(300)
        try await withPolicyServer(policy) { port, _ in
            let old = try RawConnection(port: port)
            old.sendPreface()
            #expect(await old.receivesGoAway(within: 20))
        }
    }

    /// A gRPC client with no call for the idle timeout gets a graceful close, and its next call goes
    /// through on a new connection. grpc-swift's client can fail a call that races the close with
    /// UNAVAILABLE ("no subchannel available") until it has reconnected, which REAPI clients retry:
    /// each round retries that for a while (seconds under a loaded test run), and every round must succeed.
    /// The idle timeout is a second, not less: on a loaded machine (the whole suite shares two cores) a
    /// new connection can sit longer than a few hundred milliseconds before its first call is sent, and
    /// be closed as idle again and again.
    @Test func idleClientReconnects() async throws {
        try await withPolicyServer(ConnectionPolicy(idleTimeout: .seconds(1))) { port, _ in
            let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
            try await withGRPCClient(transport: transport) { client in
                let cas = CASClient(wrapping: client)
                var options = CallOptions.defaults
                options.waitForReady = true
                for round in 0..<3 {
                    var answered = false
                    let giveUp = ContinuousClock.now + .seconds(30)
                    while !answered && ContinuousClock.now < giveUp {
                        do {
                            _ = try await cas.findMissingBlobs(.with { $0.blobDigests = [] }, options: options)
                            answered = true
                        } catch let error as RPCError where error.code == .unavailable {
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                    #expect(answered, "round \(round) after an idle close")
                    try await Task.sleep(for: .seconds(2))
                }
            }
        }
    }

    /// `maxConcurrentStreams` (`max-concurrent-streams`) is what the server announces in its SETTINGS
    /// as SETTINGS_MAX_CONCURRENT_STREAMS (0x3), so clients queue their calls beyond it.
    @Test func maxConcurrentStreamsIsAnnounced() async throws {
        for streams in [7, ConnectionPolicy.defaultMaxConcurrentStreams] {
            try await withPolicyServer(ConnectionPolicy(maxConcurrentStreams: streams)) { port, _ in
                let connection = try RawConnection(port: port)
                connection.sendPreface()
                let settings = await connection.serverSettings(within: 20)
                #expect(settings?[0x3] == UInt32(streams), "\(settings.map { "\($0)" } ?? "no SETTINGS")")
            }
        }
    }

    /// Connections beyond `maxConnections` are closed at once; those admitted stay open, and a
    /// freed place admits a new client.
    @Test func connectionsOverTheLimitAreClosed() async throws {
        try await withPolicyServer(ConnectionPolicy(maxConnections: 2)) { port, _ in
            let first = try RawConnection(port: port)
            first.sendPreface()
            #expect(await first.receivesData(within: 20))
            let second = try RawConnection(port: port)
            second.sendPreface()
            #expect(await second.receivesData(within: 20))
            let third = try RawConnection(port: port)
            #expect(await third.closedByServer(within: 20))
            #expect(await !first.closedByServer(within: 0.3))
            #expect(await !second.closedByServer(within: 0.3))
            _ = consume first
            // The place is free once the server saw the close: retry for a while, never forever.
            var admitted = false
            for _ in 0..<50 where !admitted {
                let next = try RawConnection(port: port)
                next.sendPreface()
                admitted = await !next.closedByServer(within: 0.2)
            }
            #expect(admitted)
        }
    }

    /// A graceful shutdown with a reader that stopped reading a large blob, and a socket that never
    /// spoke, still ends once the shutdown timeout has passed.
    @Test func shutdownEndsAtItsDeadline() async throws {
        let store = LRUBlobStore(capacityBytes: 256 << 20)
        let blob = Blob.random(size: 32 << 20)
        try await store.write(blob.digest, data: blob.data)
        let (release, releaseContinuation) = AsyncStream.makeStream(of: Void.self)
        defer { releaseContinuation.finish() }
        let policy = ConnectionPolicy(prefaceTimeout: .seconds(600))
        // Without the deadline the shutdown never ends: bounded here, so that it fails instead.
        // Each task answers when the shutdown began, or nil when the bound passed first.
        let shutdownBegan = try await withThrowingTaskGroup(of: ContinuousClock.Instant?.self) { group in
            group.addTask {
                try await Task.sleep(for: .seconds(30))
                return nil
            }
            group.addTask {
                try await withPolicyServer(policy, shutdownTimeout: .seconds(1), store: store) { port, server -> ContinuousClock.Instant in
                    let silent = try RawConnection(port: port)
                    let transport = try HTTP2ClientTransport.Posix(
                        target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
                    let (reading, readingContinuation) = AsyncStream.makeStream(of: Void.self)
                    let reader = Task {
                        try await withGRPCClient(transport: transport) { client in
                            let request = Google_Bytestream_ReadRequest.with { $0.resourceName = "blobs/\(blob.digest)" }
                            try await ByteStreamClient(wrapping: client).read(request) { response in
                                for try await _ in response.messages {
                                    readingContinuation.yield()
                                    // Stalled: the client stops reading until the test ends.
                                    for await _ in release { break }
                                    break
                                }
                            }
                        }
                    }
                    for await _ in reading { break }
                    let began = ContinuousClock.now
                    server.beginGracefulShutdown()
                    withExtendedLifetime(silent) {}
                    _ = reader
                    return began
                }
            }
            let began = try await group.next() ?? nil
            group.cancelAll()
            return began
        }
        let began = try #require(shutdownBegan, "the server was still shutting down after 30 s")
        // The shutdown timeout is 1 s; the margin is generous (the suite runs in parallel on 2 cores).
        #expect(ContinuousClock.now - began < .seconds(15))
    }
}
