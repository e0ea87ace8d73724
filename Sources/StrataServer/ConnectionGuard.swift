import GRPCNIOTransportHTTP2
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How long a client connection may stay silent or unfinished, how many the server keeps at once, and
/// how many calls each carries at once.
public struct ConnectionPolicy: Sendable, Hashable {
    /// A connection with no RPC for this long is closed gracefully (HTTP/2 GOAWAY); one from which
    /// nothing at all arrives (no frame, no window update, no ping) for twice this long is closed at once.
    public var idleTimeout: Duration
    /// A connection that has not sent the whole HTTP/2 client preface this long after it was accepted
    /// is closed: a socket that never speaks would otherwise hold a descriptor forever.
    public var prefaceTimeout: Duration
    /// Connections accepted beyond this many (across every listener of the server) are closed at once,
    /// so that clients can never use up the process's file descriptors.
    public var maxConnections: Int
    /// A connection older than this is asked to go away (GOAWAY) once its RPCs end, so that clients
    /// reconnect and spread over servers behind a load balancer; nil: no limit.
    public var maxAge: Duration?
    /// How long RPCs of a connection past `maxAge` may still run before it is closed; nil: no limit.
    public var maxAgeGrace: Duration?
    /// The server's keepalive pings (nil: the transport's defaults, a ping after 2 hours of silence,
    /// answered within 20 s) and the pings it accepts from clients (nil: at most one per 5 minutes,
    /// only while calls run).
    public var keepaliveTime: Duration?
    public var keepaliveTimeout: Duration?
    public var clientPingsWithoutCalls: Bool?
    public var clientPingMinimumInterval: Duration?
    /// The HTTP/2 streams (calls) a connection may have open at once, announced to the client, which
    /// queues its calls beyond it.
    public var maxConcurrentStreams: Int

    public init(
        idleTimeout: Duration = .seconds(300), prefaceTimeout: Duration = .seconds(10), maxConnections: Int? = nil,
        maxConcurrentStreams: Int = Self.defaultMaxConcurrentStreams
    ) {
        self.idleTimeout = idleTimeout
        self.prefaceTimeout = prefaceTimeout
        self.maxConnections = maxConnections ?? Self.defaultMaxConnections
        self.maxConcurrentStreams = maxConcurrentStreams
    }

    /// swift-nio-http2's own limit; with the 4 MiB window, what one connection's clients can send
    /// ahead of the server stays within 400 MiB.
    public static let defaultMaxConcurrentStreams = 100

    public static let `default` = ConnectionPolicy()

    /// Three quarters of the process's file-descriptor limit: the rest stays for storage files, backend
    /// connections and the listening sockets, so that accepting never fails for want of a descriptor.
    public static var defaultMaxConnections: Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(Int32.max) else { return 65536 }
        return max(16, Int(clamping: limit.rlim_cur) / 4 * 3)
    }
}

/// The open client connections of one server, across its listeners: counted for the connection limit,
/// and closed at once when a graceful shutdown runs past its deadline.
final class ConnectionRegistry: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])
    let policy: ConnectionPolicy

    init(policy: ConnectionPolicy) { self.policy = policy }

    /// Registers `channel`, or returns false when the server already holds `maxConnections`.
    func admit(_ channel: any Channel) -> Bool {
        channels.withLock { channels in
            guard channels.count < policy.maxConnections else { return false }
            channels[ObjectIdentifier(channel)] = channel
            return true
        }
    }

    func remove(_ channel: any Channel) {
        _ = channels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    var count: Int { channels.withLock { $0.count } }

    /// Closes every connection: the streams on them end, and the RPCs writing to them fail.
    func closeAll() {
        for channel in channels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
    }
}

/// The first handler of every accepted connection: enforces the connection limit, the preface
/// timeout and the silence limit of `ConnectionPolicy`, and registers the connection so that a
/// shutdown can close it.
///
/// It sits before the HTTP/2 handler and only looks at how many bytes arrive, so a connection that
/// never completes HTTP/2 (or never starts it) is reaped as well as one that went quiet after it.
final class ConnectionGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", RFC 9113 §3.4.
    static let prefaceLength = 24

    private let registry: ConnectionRegistry
    private var admitted = false
    private var prefaceBytesSeen = 0
    private var prefaceTimer: Scheduled<Void>?
    private var silenceTimer: Scheduled<Void>?
    private var lastRead = NIODeadline.now()

    init(registry: ConnectionRegistry) { self.registry = registry }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard !admitted else { return }
        admitted = true
        guard registry.admit(context.channel) else {
            // Over the limit: accepted only to be closed, so the listener never sits on a full backlog.
            context.close(promise: nil)
            return
        }
        let policy = registry.policy
        let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        prefaceTimer = context.eventLoop.scheduleTask(in: TimeAmount(policy.prefaceTimeout)) {
            loopContext.value.close(promise: nil)
        }
        lastRead = .now()
        scheduleSilenceCheck(context: context, after: TimeAmount(policy.idleTimeout) * 2)
    }

    /// One timer per connection, re-armed when it fires rather than on every read.
    private func scheduleSilenceCheck(context: ChannelHandlerContext, after delay: TimeAmount) {
        let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let loopSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        silenceTimer = context.eventLoop.scheduleTask(in: delay) {
            let handler = loopSelf.value
            let limit = TimeAmount(handler.registry.policy.idleTimeout) * 2
            let silent = NIODeadline.now() - handler.lastRead
            if silent >= limit {
                loopContext.value.close(promise: nil)
            } else {
                handler.scheduleSilenceCheck(context: loopContext.value, after: limit - silent)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = .now()
        if prefaceBytesSeen < Self.prefaceLength {
            prefaceBytesSeen += unwrapInboundIn(data).readableBytes
            if prefaceBytesSeen >= Self.prefaceLength {
                prefaceTimer?.cancel()
                prefaceTimer = nil
            }
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        prefaceTimer?.cancel()
        silenceTimer?.cancel()
        registry.remove(context.channel)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        prefaceTimer?.cancel()
        silenceTimer?.cancel()
    }
}

extension ConnectionPolicy {
    /// The options the gRPC transport enforces itself (BuildGrid's `grpc-server-options` that map onto it).
    func apply(to connection: inout HTTP2ServerTransport.Config.Connection) {
        if let maxAge { connection.maxAge = maxAge }
        if let maxAgeGrace { connection.maxGraceTime = maxAgeGrace }
        if let keepaliveTime { connection.keepalive.time = keepaliveTime }
        if let keepaliveTimeout { connection.keepalive.timeout = keepaliveTimeout }
        if let clientPingsWithoutCalls { connection.keepalive.clientBehavior.allowWithoutCalls = clientPingsWithoutCalls }
        if let clientPingMinimumInterval { connection.keepalive.clientBehavior.minPingIntervalWithoutCalls = clientPingMinimumInterval }
    }
}
