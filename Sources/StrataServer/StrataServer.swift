import GRPCCore
import GRPCNIOTransportHTTP2
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCertificateReloading
import NIOSSL
import ServiceLifecycle
import StrataAPI
import StrataAuth
import StrataCore
import StrataProto

/// Where a server listens: `host:port`, `[v6]:port` or `unix:/path`.
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public let kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    public init(parsing text: String) throws(StrataError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst("unix:".count))
            guard !path.isEmpty else { throw .invalidArgument("address \"\(text)\": unix: needs a path") }
            kind = .unix(path: path)
            return
        }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port)
        else {
            throw .invalidArgument("address \"\(text)\" is not host:port, [ipv6]:port or unix:/path")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw .invalidArgument("address \"\(text)\" has no host") }
        kind = .tcp(host: host, port: port)
    }

    public var description: String {
        switch kind {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }

    var socketAddress: GRPCNIOTransportCore.SocketAddress {
        switch kind {
        case .tcp(let host, let port):
            host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host == "localhost" ? "127.0.0.1" : host, port: port)
        case .unix(let path): .unixDomainSocket(path: path)
        }
    }
}

/// The gRPC services the configuration's modules make, on one or more listening addresses.
///
/// Each TCP address is served by `eventLoops` listeners (by default one per core), bound with
/// SO_REUSEPORT; a listener's connections and the handlers of their RPCs all run on one thread, one of
/// `SharedEventLoops` (see `EventLoopTaskExecutor`). Unix sockets and host names get one listener.
///
/// Runs as a swift-service-lifecycle `Service`: on graceful shutdown (SIGTERM/SIGINT in `strata serve`)
/// it stops accepting RPCs, lets the ones in flight finish for at most `shutdownTimeout`, closes the
/// connections still open, then abandons parked uploads. With `authentication`, an
/// `AuthenticationInterceptor` establishes each request's principal (the registry's access policy judges it). Every connection passes a `ConnectionGuard`
/// (timeouts, connection limit) and a `FinishedStreamResetFilter` first.
public final class StrataServer: Service, Sendable {
    public let registry: InstanceRegistry
    public let uploads: UploadRegistry
    private struct Listener: Sendable {
        let address: ListenAddress
        let server: GRPCServer<HTTP2ServerTransport.Posix>
        let transport: HTTP2ServerTransport.Posix
        let loop: MultiThreadedEventLoopGroup
        /// The listening socket made here, which the transport owns once it serves.
        let socket: Int?
    }
    private let listeners: [Listener]
    /// What keeps each TLS address's certificate current, run while serving.
    private let certificateReloaders: [TimedCertificateReloader]
    /// The open connections of each address, shared by its listeners.
    private let connections: [ConnectionRegistry]
    /// How long a graceful shutdown waits for RPCs in flight before closing their connections.
    private let shutdownTimeout: Duration
    /// Yields once when a graceful shutdown starts, which starts `shutdownTimeout`'s clock.
    private let shutdownRequests: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    /// Whether `run` started: until then the sockets are this object's to close.
    private let started = Mutex(false)
    private let logger: Logger
    /// What the health service reports; draining once a graceful shutdown starts.
    public let health: HealthStatus
    /// Begun with the graceful shutdown; every RPC's `RequestContext` reads it.
    let shutdown = ServerShutdown()

    /// The fully qualified names of the gRPC services `services` register: what the health service
    /// answers for, besides "" (the whole server) and itself.
    static func serviceNames(_ services: [any RegistrableRPCService]) -> [String] {
        var router = RPCRouter<HTTP2ServerTransport.Posix>()
        for service in services { service.registerMethods(with: &router) }
        return Array(Set(router.methods.map(\.service.fullyQualifiedService))).sorted()
    }

    /// 4 MiB: a 64 MiB ByteStream write runs as fast as with 8 or 16 MiB (about 0.9 GB/s on LRU storage
    /// here), and a 4 GiB write peaks at +45 MiB of server RSS instead of +63 MiB with 16 MiB.
    static let http2WindowBytes = 4 << 20
    static let http2MaxFrameBytes = 1 << 20

    /// Binds every address now: one already in use is an error here, naming it.
    ///
    /// `modules` make the gRPC services (the configuration's, by default a storage server's);
    /// `interceptors` run on every RPC, in order, after the one that sets `RequestContext.current` and
    /// before the deadline and error-status ones next to the handlers. `policies` names each address's `ConnectionPolicy` (`ConnectionPolicy.default` for the others);
    /// `shutdownTimeout` bounds a graceful shutdown: RPCs still running then are ended by closing their
    /// connections. `tls` names the addresses served over TLS (the others are plaintext): their files
    /// are read here, a missing or bad one is an error naming it. `concurrencyLimits` refuse RPCs past them.
    public init(
        registry: InstanceRegistry, modules: [any ServiceModule] = StrataServer.storageModules,
        interceptors: [any ServerInterceptor] = [],
        addresses: [ListenAddress], uploads: UploadRegistry = UploadRegistry(),
        logger: Logger = Logger(label: "strata"), eventLoops: Int = System.coreCount,
        policies: [ListenAddress: ConnectionPolicy] = [:], shutdownTimeout: Duration = .seconds(30),
        health: HealthStatus = HealthStatus(), accessLog: Logger? = nil, metrics: RPCMetrics? = nil,
        authentication: Authentication? = nil,
        tls: [ListenAddress: TLSCredentials] = [:], concurrencyLimits: [ConcurrencyLimit] = []
    ) throws(StrataError) {
        self.health = health
        self.registry = registry
        self.uploads = uploads
        self.logger = logger
        self.shutdownTimeout = shutdownTimeout
        self.shutdownRequests = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let environment = ServerEnvironment(registry: registry, uploads: uploads, logger: logger)
        var services = modules.flatMap { $0.rpcServices(environment) }
        // The health service answers for every service the modules made, whatever they are.
        services.append(HealthService(status: health, services: Self.serviceNames(services)))
        // The context first, so every interceptor after it reads it; the access log next, so it sees the
        // final status of every RPC; the error mapping runs next to the handlers: a CancellationError they
        // throw must become CANCELLED before anything else sees it (RequestHardeningTests proves the order).
        // Authentication records the principal (the registry decides, so health needs no token); metrics
        // and the access log read the context and see the status the client gets.
        let interceptors: [any ServerInterceptor] =
            [RequestContextInterceptor(shutdown: shutdown)] + (authentication.map { [AuthenticationInterceptor(authentication: $0)] } ?? [])
            + (accessLog.map { [AccessLogInterceptor(logger: $0)] } ?? [])
            + (metrics.map { [MetricsInterceptor(metrics: $0)] } ?? [])
            // One count per limit across every listener; refusals are logged and counted above.
            + concurrencyLimits.map(ConcurrencyLimitInterceptor.init) + interceptors
            + [RequestDeadlineInterceptor(), ErrorStatusInterceptor()]
        var config = HTTP2ServerTransport.Posix.Config.defaults
        // Each method's request limit, answered with RESOURCE_EXHAUSTED (see RequestSizeLimits).
        let requestLimits = RequestSizeLimits(maxBatchTotalSizeBytes: registry.maxBatchTotalSizeBytes)
        config.rpc.maxRequestPayloadSize = requestLimits.largest
        config.channelDebuggingCallbacks.onAcceptHTTP2Stream = { requestLimits.install(on: $0) }
        // A larger window keeps large ByteStream transfers from stalling on flow control.
        config.http2.targetWindowSize = Self.http2WindowBytes
        // Frames the client may send: at HTTP/2's default 16 KiB, every 1 MiB ByteStream message is 64
        // frames, each parsed, flow-accounted and copied into the message separately.
        config.http2.maxFrameSize = Self.http2MaxFrameBytes
        // Flushes are merged by `LoopTickFlushCoalescer`, which holds them on a timer only while other
        // calls owe answers: the transport's 100 µs timer cost a call at one client a second wake-up.
        config.connection.flushCoalescing = nil

        var listeners: [Listener] = []
        var connections: [ConnectionRegistry] = []
        var certificateReloaders: [TimedCertificateReloader] = []
        // One count per limit across every listener.
        /// `config` for one address: its connections go through a `ConnectionGuard` of its registry.
        func addressConfig(for address: ListenAddress) -> HTTP2ServerTransport.Posix.Config {
            var policy = policies[address] ?? .default
            // Past the descriptor limit NIO's accept loop spins (7 s of CPU in 3 s measured) and new
            // clients wait: connections stay below it whatever the configuration says.
            let ceiling = ConnectionPolicy.defaultMaxConnections
            if policy.maxConnections > ceiling {
                logger.warning("\(address): max-connections \(policy.maxConnections) lowered to \(ceiling), three quarters of the open-file limit")
                policy.maxConnections = ceiling
            }
            let registry = ConnectionRegistry(policy: policy)
            connections.append(registry)
            var config = config
            // swift-nio-http2 refuses a client's 101st concurrent stream with a connection error (GOAWAY
            // PROTOCOL_ERROR, failing every call on the connection) unless the server announces its limit,
            // which grpc-swift does only when set: announced, clients queue their calls beyond it instead.
            config.http2.maxConcurrentStreams = policy.maxConcurrentStreams
            // Graceful (GOAWAY) for a client with no RPC; `ConnectionGuard` closes silent ones outright.
            config.connection.maxIdleTime = policy.idleTimeout
            policy.apply(to: &config.connection)
            config.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    // The reset filter reads HTTP/2 frames: on a TLS connection, after the handler that
                    // decrypts them (before it, it would parse ciphertext as frames).
                    let tls = try? pipeline.handler(type: NIOSSLServerHandler.self)
                    let resetFilter = FinishedStreamResetFilter()
                    try pipeline.addHandler(resetFilter, position: tls.map { .after($0) } ?? .first)
                    // Next to the socket, after TLS: it holds back only bytes ready to be sent, and
                    // waits for more answers only while the filter counts calls that still owe one.
                    try pipeline.addHandler(LoopTickFlushCoalescer(answersOwed: { resetFilter.answersOwed }), position: .first)
                    // The guard counts bytes and silence, which TLS does not change: first, as always.
                    try pipeline.addHandler(ConnectionGuard(registry: registry), position: .first)
                }
            }
            return config
        }
        func listener(
            _ address: ListenAddress, index: Int = 0, socket: Int? = nil,
            _ bind: (MultiThreadedEventLoopGroup) -> HTTP2ServerTransport.Posix
        ) {
            let loop = SharedEventLoops.shared[index % SharedEventLoops.shared.count]
            let transport = bind(loop)
            listeners.append(Listener(
                address: address, server: GRPCServer(transport: transport, services: services, interceptors: interceptors),
                transport: transport,
                loop: loop, socket: socket))
        }
        do throws(StrataError) {
            for address in addresses {
                let config = addressConfig(for: address)
                var security = HTTP2ServerTransport.Posix.TransportSecurity.plaintext
                if let credentials = tls[address] {
                    let secured = try credentials.transportSecurity(for: address, logger: logger)
                    security = secured.security
                    certificateReloaders.append(secured.reloader)
                }
                if case .tcp(let host, let port) = address.kind, let ip = Self.ipAddress(host) {
                    let sockets = try ReusePortSockets.make(host: ip, port: port, count: max(1, eventLoops))
                    for (index, socket) in sockets.enumerated() {
                        listener(address, index: index, socket: socket) { loop in
                            HTTP2ServerTransport.Posix(
                                listeningSocketDescriptor: socket, transportSecurity: security, config: config, eventLoopGroup: loop)
                        }
                    }
                } else {
                    listener(address) { loop in
                        HTTP2ServerTransport.Posix(
                            address: address.socketAddress, transportSecurity: security, config: config, eventLoopGroup: loop)
                    }
                }
            }
        } catch {
            for socket in listeners.compactMap(\.socket) { close(CInt(socket)) }
            throw error
        }
        self.listeners = listeners
        self.connections = connections
        self.certificateReloaders = certificateReloaders
    }

    deinit {
        guard !started.withLock({ $0 }) else { return }
        for socket in listeners.compactMap(\.socket) { close(CInt(socket)) }
    }

    /// `host` as an IP address the listeners can bind, or nil for a host name.
    private static func ipAddress(_ host: String) -> String? {
        let ip = host == "localhost" ? "127.0.0.1" : host
        return (try? NIOCore.SocketAddress(ipAddress: ip, port: 0)) == nil ? nil : ip
    }

    /// The bound addresses, once listening (port 0 resolved to the real port).
    public func listeningAddresses() async throws -> [ListenAddress] {
        var result: [ListenAddress] = []
        for listener in listeners {
            let bound = try await listener.transport.listeningAddress
            let address = if let ipv4 = bound.ipv4 {
                ListenAddress(.tcp(host: ipv4.host, port: ipv4.port))
            } else if let ipv6 = bound.ipv6 {
                ListenAddress(.tcp(host: ipv6.host, port: ipv6.port))
            } else {
                listener.address
            }
            // An address's listeners share it: name it once.
            if !result.contains(address) { result.append(address) }
        }
        return result
    }

    public func run() async throws {
        started.withLock { $0 = true }
        try await serve()
    }

    private func serve() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { housekeeping in
                housekeeping.addTask { [uploads] in await uploads.runExpiry() }
                housekeeping.addTask { [self] in await enforceShutdownDeadline() }
                housekeeping.addTask { [health] in await health.monitor() }
                housekeeping.addTask { [logger] in await Self.returnFreedMemory(every: Self.memoryReturnPeriod, logger: logger) }
                for reloader in certificateReloaders {
                    // Ends only when cancelled; a failed read is logged by the reloader's callback.
                    housekeeping.addTask { try? await reloader.run() }
                }
                try await withThrowingTaskGroup(of: Void.self) { serving in
                    for listener in listeners {
                        serving.addTask {
                            do {
                                // Every task of this listener's connections and RPCs runs on its loop.
                                try await withTaskExecutorPreference(EventLoopTaskExecutor(listener.loop.next())) {
                                    try await listener.server.serve()
                                }
                            } catch {
                                throw StrataError.unavailable("cannot serve on \(listener.address): \(Self.describe(error))")
                            }
                        }
                    }
                    serving.addTask { [self] in
                        if let bound = try? await listeningAddresses() {
                            logger.info("strata listening on \(bound.map(\.description).joined(separator: ", "))")
                        }
                    }
                    // A listener that fails ends the group at once, which cancels (stops) the others;
                    // `waitForAll` would wait for them all first, and they serve until shutdown.
                    for try await _ in serving {}
                }
                housekeeping.cancelAll()
            }
        } onGracefulShutdown: { [self] in
            beginGracefulShutdown()
        }
        uploads.abandonAll()
    }

    /// Stops accepting RPCs and lets the ones in flight finish, for at most `shutdownTimeout`.
    public func beginGracefulShutdown() {
        logger.info("strata shutting down: finishing requests in flight (at most \(shutdownTimeout))")
        health.beginDraining()
        // Before gRPC cancels the RPCs in flight, so that their handlers know why.
        shutdown.begin()
        for listener in listeners { listener.server.beginGracefulShutdown() }
        shutdownRequests.continuation.yield()
    }

    /// Once a graceful shutdown has run for `shutdownTimeout`, closes every connection still open: a
    /// client that stopped reading a download, or a socket that never spoke, would otherwise hold the
    /// shutdown (and the process) forever. Cancelled when serving ends first.
    private func enforceShutdownDeadline() async {
        for await _ in shutdownRequests.stream { break }
        guard (try? await Task.sleep(for: shutdownTimeout)) != nil else { return }
        let open = connections.reduce(0) { $0 + $1.count }
        logger.warning("strata shutdown: \(shutdownTimeout) passed; closing \(open) connection(s) with requests still in flight")
        for registry in connections { registry.closeAll() }
    }

    static let memoryReturnPeriod: Duration = .seconds(5)

    /// Hands memory that was freed back to the system, every `period`.
    ///
    /// glibc gives freed memory back to the system on its own only from the top of its heap, and
    /// `strata` runs with one arena: the messages of 300 stalled 64 MiB reads (+160 MiB) stayed in RSS
    /// after the clients cancelled them and closed their connections. `malloc_trim` releases free
    /// pages anywhere in the heap (RSS went back to its size before the reads); it holds the arena's
    /// lock while it walks the free chunks: 0.6 to 15 ms measured, the longest when it released most.
    static func returnFreedMemory(every period: Duration, logger: Logger) async {
        #if canImport(Glibc)
        // <malloc.h> is not in Swift's Glibc module: malloc_trim is looked up.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return }
        typealias MallocTrim = @convention(c) (Int) -> CInt
        let trim = unsafeBitCast(symbol, to: MallocTrim.self)
        while (try? await Task.sleep(for: period)) != nil {
            let start = ContinuousClock.now
            _ = trim(0)
            logger.trace("malloc_trim took \(ContinuousClock.now - start)")
        }
        #endif
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? RuntimeError {
            return error.message + (error.cause.map { ": \($0)" } ?? "")
        }
        return String(describing: error)
    }
}
