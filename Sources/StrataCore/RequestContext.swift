import Synchronization

/// Who made a request, as authentication established it: from a JWT's claims, a client certificate's
/// subject (mutual TLS), trusted headers, or nothing (`anonymous`).
public struct Principal: Sendable, Hashable, CustomStringConvertible {
    public enum Source: String, Sendable, Hashable {
        /// No credentials (authorization off, or an instance that allows unauthenticated requests).
        case anonymous
        /// A verified JSON Web Token.
        case jwt
        /// A verified client certificate (mutual TLS).
        case clientCertificate = "client-certificate"
        /// Headers set by a trusted proxy (`authorization: {method: headers}`).
        case headers
        /// HTTP basic credentials checked against an htpasswd file (`authorization: {method: htpasswd}`).
        case htpasswd
        /// A request from the loopback interface, trusted by `allow-localhost-requests`.
        case localhost
    }

    public var source: Source
    /// What the ACL's `actor` matches: the token's `act` claim (else `sub`), the certificate's subject.
    public var actor: String?
    /// What the ACL's `subject` matches: the token's `sub` claim.
    public var subject: String?
    /// What the ACL's `workflow` matches: the token's `aud` claim.
    public var workflow: String?

    public init(source: Source, actor: String? = nil, subject: String? = nil, workflow: String? = nil) {
        self.source = source
        self.actor = actor
        self.subject = subject
        self.workflow = workflow
    }

    public static let anonymous = Principal(source: .anonymous)

    public var description: String {
        switch source {
        case .anonymous: "anonymous"
        case .localhost: "localhost"
        default: "\(source.rawValue):\(actor ?? subject ?? "?")"
        }
    }
}

/// What the client said about itself in `build.bazel.remote.execution.v2.requestmetadata-bin`
/// (REAPI's RequestMetadata): which tool, which invocation, which action. Empty fields were not sent.
public struct ClientRequestMetadata: Sendable, Hashable {
    public var toolName = ""
    public var toolVersion = ""
    public var actionID = ""
    public var toolInvocationID = ""
    public var correlatedInvocationsID = ""
    public var actionMnemonic = ""
    public var targetID = ""
    public var configurationID = ""

    public init() {}

    public var isEmpty: Bool { self == ClientRequestMetadata() }
}

/// Whether the server serving a request has begun its graceful shutdown: set before gRPC is told, so
/// a handler whose RPC gRPC then cancels can tell the server closing it from the client leaving.
public final class ServerShutdown: Sendable {
    private let begun = Atomic<Bool>(false)

    public init() {}

    public var hasBegun: Bool { begun.load(ordering: .acquiring) }

    public func begin() { begun.store(true, ordering: .releasing) }
}

/// The request being served: which RPC, from whom, for which instance, and what the client said about
/// itself. Set once per RPC by the server's context interceptor, for the handler and the producer of
/// its streamed response, so every layer below (services, storages, caches, logs, metrics,
/// authorization) can read it as `RequestContext.current` without it being passed down.
///
/// The instance name is known only once the service has read the request's message (a ByteStream
/// resource name, a field of the first message): the service records it with `setInstanceName` when it
/// looks the instance up. Byte counts are added as messages go by.
public final class RequestContext: Sendable {
    /// The gRPC service, e.g. `build.bazel.remote.execution.v2.ContentAddressableStorage`.
    public let service: String
    /// The method, e.g. `FindMissingBlobs`: the name the ACL's `requests` lists.
    public let method: String
    /// The client's address as the transport reports it (`ipv4:127.0.0.1:51234`).
    public let peer: String
    public let metadata: ClientRequestMetadata
    public let started: ContinuousClock.Instant
    /// The serving server's shutdown state.
    public let serverShutdown: ServerShutdown

    private struct State {
        var instanceName: String?
        var principal: Principal = .anonymous
        var authenticationFailure: String?
    }
    private let state: Mutex<State>
    private let received = Atomic<Int64>(0)
    private let sent = Atomic<Int64>(0)

    public init(
        service: String, method: String, peer: String, metadata: ClientRequestMetadata = ClientRequestMetadata(),
        principal: Principal = .anonymous, started: ContinuousClock.Instant = .now, serverShutdown: ServerShutdown = ServerShutdown()
    ) {
        self.serverShutdown = serverShutdown
        self.service = service
        self.method = method
        self.peer = peer
        self.metadata = metadata
        self.started = started
        self.state = Mutex(State(principal: principal))
    }

    @TaskLocal public static var current: RequestContext?

    /// The instance the request addressed, once the service has looked it up.
    public var instanceName: String? { state.withLock { $0.instanceName } }

    public func setInstanceName(_ name: String) { state.withLock { $0.instanceName = name } }

    /// Who made the request; `anonymous` until authentication says otherwise.
    public var principal: Principal { state.withLock { $0.principal } }

    public func setPrincipal(_ principal: Principal) { state.withLock { $0.principal = principal } }

    /// Why the credentials the request brought were refused (a bad token, say), while the principal
    /// stays `anonymous`: authentication runs before the instance is known, and an instance that
    /// allows unauthenticated requests serves it anyway; any other answers UNAUTHENTICATED with this.
    public var authenticationFailure: String? { state.withLock { $0.authenticationFailure } }

    public func setAuthenticationFailure(_ reason: String) { state.withLock { $0.authenticationFailure = reason } }

    /// Payload bytes of the request's messages read so far.
    public var bytesReceived: Int64 { received.load(ordering: .relaxed) }
    /// Payload bytes of the response's messages written so far.
    public var bytesSent: Int64 { sent.load(ordering: .relaxed) }

    public func addReceived(_ bytes: Int) { received.add(Int64(bytes), ordering: .relaxed) }
    public func addSent(_ bytes: Int) { sent.add(Int64(bytes), ordering: .relaxed) }

    /// Whether the client connected over the loopback interface.
    public var isFromLoopback: Bool {
        peer.hasPrefix("ipv4:127.") || peer.hasPrefix("ipv6:[::1]") || peer.hasPrefix("unix:")
    }
}
