import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import NIOCore
import Logging
import ServiceLifecycle
import StrataCore
import Synchronization

/// One HTTP route: a method, a path, and what answers it (Hummingbird's request and context, so a
/// route can stream a body in or out).
public struct HTTPRoute: Sendable {
    public var method: HTTPRequest.Method
    public var path: String
    public var handler: @Sendable (Request, PeerRequestContext) async throws -> Response

    public init(
        _ method: HTTPRequest.Method, _ path: String,
        handler: @escaping @Sendable (Request, PeerRequestContext) async throws -> Response
    ) {
        self.method = method
        self.path = path
        self.handler = handler
    }

    /// A route answering with a whole text body.
    public static func text(
        _ path: String, _ reply: @escaping @Sendable () async -> (status: HTTPResponse.Status, contentType: String, body: String)
    ) -> HTTPRoute {
        HTTPRoute(.get, path) { _, _ in
            let (status, contentType, body) = await reply()
            return Response(
                status: status, headers: [.contentType: contentType],
                body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
        }
    }
}

/// Hummingbird's request context with the client's address (for logs and `allow-localhost-requests`).
public struct PeerRequestContext: Hummingbird.RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.remoteAddress = source.channel.remoteAddress
    }

    /// The address as gRPC's transport writes a peer (`ipv4:127.0.0.1:51234`), which
    /// `RequestContext.isFromLoopback` reads.
    public var peer: String {
        switch remoteAddress {
        case .v4(let address)?: "ipv4:\(address.host):\(remoteAddress?.port ?? 0)"
        case .v6(let address)?: "ipv6:[\(address.host)]:\(remoteAddress?.port ?? 0)"
        case .unixDomainSocket?: "unix:\(remoteAddress?.pathname ?? "")"
        case nil: "unknown"
        }
    }
}

/// An HTTP/1.1 listener on `host:port` serving `routes` (404 for any other path), run as a
/// swift-service-lifecycle `Service` beside the gRPC server: it binds when run, never before, and a
/// port in use fails `run` naming the address.
public final class HTTPListener: Service, Sendable {
    public let host: String
    public let port: Int
    private let routes: [HTTPRoute]
    private let logger: Logger
    private let bound: (stream: AsyncStream<Int>, continuation: AsyncStream<Int>.Continuation)
    private let boundPort = Mutex<Int?>(nil)
    /// What the start-up log line says the listener serves, e.g. "monitoring".
    public let purpose: String
    /// TLS settings (nil: plaintext).
    private let tls: TLSConfiguration?
    /// Answers `Expect: 100-continue` before a request's body is read (curl waits for it).
    private let answersExpectContinue: Bool
    /// Work that lasts as long as the listener (its TLS certificate's reloader), cancelled when it stops.
    private let runningAlongside: [@Sendable () async -> Void]

    public init(
        host: String, port: Int, routes: [HTTPRoute], purpose: String, logger: Logger, tls: TLSConfiguration? = nil,
        runningAlongside: [@Sendable () async -> Void] = [], answersExpectContinue: Bool = false
    ) {
        self.runningAlongside = runningAlongside
        self.host = host
        self.port = port
        self.routes = routes
        self.purpose = purpose
        self.logger = logger
        self.tls = tls
        self.answersExpectContinue = answersExpectContinue
        self.bound = AsyncStream.makeStream(of: Int.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// The port it listens on (port 0 resolved), once it does; nil if it stopped first.
    public func listeningPort() async -> Int? {
        if let port = boundPort.withLock({ $0 }) { return port }
        for await port in bound.stream { return port }
        return boundPort.withLock { $0 }
    }

    /// Hummingbird's own logger: its start-up line repeats this listener's, and per-request lines
    /// would be an access log (which the gRPC side owns): warnings and above only.
    static func quieter(_ logger: Logger) -> Logger {
        var quieter = logger
        quieter.logLevel = max(logger.logLevel, .warning)
        return quieter
    }

    /// The subject of a mutual-TLS connection's verified client certificate, set by the listener
    /// (`ClientCertificateHandler`), never by a client.
    public static let verifiedClientCertificateHeader = HTTPFields.Element.Name("x-strata-verified-client-certificate")!

    /// The router of `routes`, also what tests drive without a socket.
    public static func router(_ routes: [HTTPRoute]) -> Router<PeerRequestContext> {
        let router = Router(context: PeerRequestContext.self)
        for route in routes {
            router.on(RouterPath(route.path), method: route.method, use: route.handler)
        }
        return router
    }

    public func run() async throws {
        let router = Self.router(routes)
        let expectContinue = answersExpectContinue
        let http1: HTTPServerBuilder = .http1(
            additionalChannelHandlers: [ClientCertificateHandler()] + (expectContinue ? [ExpectContinueHandler()] : []))
        let server: HTTPServerBuilder
        do {
            server = try tls.map { try .tls(http1, tlsConfiguration: $0) } ?? http1
        } catch {
            throw StrataError.unavailable("\(purpose): cannot set up TLS on \(host):\(port): \(error)")
        }
        let scheme = tls == nil ? "http" : "https"
        let app = Application(
            router: router,
            server: server,
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { [self] channel in
                let actual = channel.localAddress?.port ?? port
                boundPort.withLock { $0 = actual }
                bound.continuation.yield(actual)
                logger.info("\(purpose) listening on \(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(actual) (\(routes.map(\.path).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }.joined(separator: ", ")))")
            },
            logger: Self.quieter(logger))
        defer { bound.continuation.finish() }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for work in runningAlongside { group.addTask { await work() } }
                try await app.run()
                group.cancelAll()
            }
        } catch {
            throw StrataError.unavailable("\(purpose): cannot serve HTTP on \(host):\(port): \(error)")
        }
    }
}
