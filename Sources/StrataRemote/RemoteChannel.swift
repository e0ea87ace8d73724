import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import StrataAPI
import StrataCore
import Synchronization

typealias CapabilitiesClient = Build_Bazel_Remote_Execution_V2_Capabilities.Client<HTTP2ClientTransport.Posix>

/// One gRPC channel to another REAPI server: the one way Strata makes a client connection, shared by
/// `!remote-storage`, `!remote-action-cache` and the `strata cas` / `strata ac` / `strata capabilities`
/// commands. It holds the endpoint (`RemoteEndpoint`), plaintext or TLS (a CA file or the system's
/// roots, mutual TLS with a client certificate and key), the bearer token, the RequestMetadata passed
/// on, per-call deadlines, retries of idempotent calls with backoff, and the peer's capabilities (read
/// once, for its batch limit).
///
/// `run()` keeps the channel's connections; the server runs it as a background service.
public final class RemoteChannel: Sendable {
    public struct Options: Sendable {
        public var instanceName = ""
        public var retries = 3
        public var maxBackoff: Duration = .seconds(64)
        public var requestTimeout: Duration? = nil
        public var credentials = RemoteCredentials()
        /// The RequestMetadata calls carry when they are not made for a request being served (a
        /// client command's own: tool name "strata").
        public var requestMetadata: ClientRequestMetadata? = nil
        /// HTTP/2 keepalive pings (gRPC's `keepalive_time_ms` / `keepalive_timeout_ms`).
        public var keepaliveTime: Duration? = nil
        public var keepaliveTimeout: Duration? = nil
        /// The largest message the channel accepts (gRPC's `max_receive_message_length`); grpc-swift's
        /// default (4 MiB) when nil.
        public var maxReceiveMessageBytes: Int? = nil
        /// The largest message the channel sends (gRPC's `max_send_message_length`).
        public var maxSendMessageBytes: Int? = nil
        public init() {}
    }

    public let endpoint: RemoteEndpoint
    public let options: Options
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>
    private let makeClient: @Sendable () throws -> Client
    private let state: Mutex<(client: Client, shutDown: Bool)>
    /// Clients that replaced a silent one, for `run()` to run.
    private let replacements = AsyncStream<Client>.makeStream()
    private let capabilities = Mutex<Build_Bazel_Remote_Execution_V2_ServerCapabilities?>(nil)

    /// The client calls go through now.
    var client: Client { state.withLock { $0.client } }

    /// `url` as `RemoteEndpoint` reads it. TLS when the scheme says so (`grpcs://`, `https://`), or
    /// for a Unix socket when TLS files are given; TLS files with a plaintext scheme are refused, as
    /// they would be silently unused.
    public convenience init(url: String, options: Options) throws(StrataError) {
        try self.init(endpoint: RemoteEndpoint(url: url), options: options)
    }

    public init(endpoint: RemoteEndpoint, options: Options) throws(StrataError) {
        try options.credentials.validate()
        let credentials = options.credentials
        let useTLS: Bool
        switch endpoint.address {
        case .host:
            if !endpoint.schemeRequiresTLS && credentials.hasTLSFiles {
                throw .invalidArgument("\(endpoint): TLS files are given but the URL is plaintext; use grpcs://\(endpoint)")
            }
            useTLS = endpoint.schemeRequiresTLS
        case .unixSocket: useTLS = credentials.hasTLSFiles
        }
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.http2.targetWindowSize = 8 << 20
        if let time = options.keepaliveTime {
            config.connection.keepalive = .init(time: time, timeout: options.keepaliveTimeout ?? .seconds(20), allowWithoutCalls: false)
        }
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if useTLS {
            security = .tls(.defaults { tls in
                if let ca = credentials.tlsCAFile { tls.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
                if let cert = credentials.tlsClientCertFile, let key = credentials.tlsClientKeyFile {
                    tls.certificateChain = [.file(path: cert, format: .pem)]
                    tls.privateKey = .file(path: key, format: .pem)
                }
            })
        } else {
            security = .plaintext
        }
        let interceptors: [any ClientInterceptor] = [
            RemoteCallHeadersInterceptor(token: BearerToken(credentials), ownMetadata: options.requestMetadata),
        ]
        // A new transport reads the TLS files again: a reconnection after `replace` uses renewed ones.
        let makeClient: @Sendable () throws -> Client = { [config] in
            let target: any ResolvableTarget = switch endpoint.address {
            // An IP address is connected to as such: resolved by DNS, it would be sent as the TLS
            // server name, which TLS forbids (the certificate is checked against the address instead).
            case .host(let host, let port) where RemoteEndpoint.isIPv4(host):
                ResolvableTargets.IPv4(addresses: [.init(host: host, port: port)])
            case .host(let host, let port) where host.contains(":"):
                ResolvableTargets.IPv6(addresses: [.init(host: host, port: port)])
            case .host(let host, let port): ResolvableTargets.DNS(host: host, port: port)
            case .unixSocket(let path): ResolvableTargets.UnixDomainSocket(address: .init(path: path), authority: nil)
            }
            return GRPCClient(
                transport: try HTTP2ClientTransport.Posix(target: target, transportSecurity: security, config: config),
                interceptors: interceptors)
        }
        let client: Client
        do {
            client = try makeClient()
        } catch let error as RuntimeError {
            // The TLS files were readable but are not what TLS needs (not PEM, a key that does not match).
            let message = error.message.hasSuffix(".") ? String(error.message.dropLast()) : error.message
            throw .invalidArgument("\(endpoint): \(message)\(error.cause.map { ": \($0)" } ?? "")")
        } catch {
            throw .invalidArgument("\(endpoint): \(error)")
        }
        self.endpoint = endpoint
        self.options = options
        self.makeClient = makeClient
        self.state = Mutex((client, false))
    }

    /// Keeps the channel open until `shutdown()`; requests made before it starts wait for it.
    public func run() async throws {
        // Each client runs until replaced (then it closes once its calls are over) or shut down.
        try await withThrowingDiscardingTaskGroup { group in
            let first = client
            group.addTask { try await Self.runConnections(of: first) }
            for await replacement in replacements.stream {
                group.addTask { try await Self.runConnections(of: replacement) }
            }
        }
    }

    /// A client's connections, until it shuts down. One shut down before they started (the channel
    /// closed right after a replacement, or before `run()`) has nothing to run: not an error.
    private static func runConnections(of client: Client) async throws {
        do {
            try await client.runConnections()
        } catch let error as RuntimeError where error.code == .clientIsStopped {
        }
    }

    public func shutdown() {
        let client = state.withLock { state in
            state.shutDown = true
            return state.client
        }
        replacements.continuation.finish()
        client.beginGracefulShutdown()
    }

    /// `silent` got no answer within a call's timeout: its connection may have gone silent for good
    /// (the remote hung, or the network path dropped it without a reset), and HTTP/2 would keep
    /// sending every call into it. Calls move to a new client with a new connection; the old one
    /// closes once its calls are over. A remote merely slow costs a reconnection.
    func replace(_ silent: Client) {
        let replacement: Client? = state.withLock { state in
            guard state.client === silent, !state.shutDown, let client = try? makeClient() else { return nil }
            state.client = client
            return client
        }
        guard let replacement else { return }
        replacements.continuation.yield(replacement)
        silent.beginGracefulShutdown()
    }

    /// Whether a failed call timed out on our bound while the client still waited: a silent remote.
    func timedOutSilently(_ error: any Error) -> Bool {
        guard (error as? RPCError)?.code == .deadlineExceeded else { return false }
        return RequestDeadline.remaining.map { $0 > .zero } ?? true
    }

    /// A call that takes longer has hung (the remote accepted it and went silent) when neither
    /// `requestTimeout` nor the client's deadline bounds it sooner. Calls move at most a batch or a
    /// read chunk (a few MiB), so this is generous.
    public static let defaultCallTimeout: Duration = .seconds(20)

    /// Options of a unary or ranged call: the configured timeout (else `defaultCallTimeout`),
    /// shortened to the client's deadline.
    var callOptions: CallOptions {
        var callOptions = messageLimits
        callOptions.timeout = RequestDeadline.bounded(options.requestTimeout ?? Self.defaultCallTimeout)
        return callOptions
    }

    /// Options of a streamed upload, whose length has no bound: only the configured timeout and the
    /// client's deadline apply.
    var streamingCallOptions: CallOptions {
        var callOptions = messageLimits
        callOptions.timeout = RequestDeadline.bounded(optional: options.requestTimeout)
        return callOptions
    }

    private var messageLimits: CallOptions {
        var callOptions = CallOptions.defaults
        if let limit = options.maxReceiveMessageBytes { callOptions.maxResponseMessageBytes = limit }
        if let limit = options.maxSendMessageBytes { callOptions.maxRequestMessageBytes = limit }
        return callOptions
    }

    /// Runs an idempotent call, retrying it with backoff when the remote answers UNAVAILABLE (the one
    /// status the gRPC and REAPI specs call transient), within `maxBackoff` pauses and the client's
    /// deadline; maps the final error. Anything else, RESOURCE_EXHAUSTED ("too large") and timeouts
    /// included, would fail again the same way.
    func call<Value: Sendable>(_ name: String, _ body: @Sendable (Client) async throws -> Value) async throws -> Value {
        let policy = RetryPolicy(
            maxAttempts: options.retries + 1, baseDelay: .milliseconds(100), maxDelay: options.maxBackoff,
            budget: options.requestTimeout ?? Self.defaultCallTimeout)
        do {
            return try await policy.run(isTransient: { ($0 as? RPCError)?.code == .unavailable }) { _ in
                let client = self.client
                do {
                    return try await body(client)
                } catch {
                    if timedOutSilently(error) { replace(client) }
                    throw error
                }
            }
        } catch let error as RPCError {
            throw mapped(error, name)
        }
    }

    func mapped(_ error: RPCError, _ name: String) -> StrataError {
        if error.code == .deadlineExceeded {
            // Our own call deadline passed: the remote hung, which the client is told as for any
            // backend that cannot serve now (its own deadline, if that was it, has passed anyway).
            return .unavailable("remote \(endpoint): \(name) got no answer in time: \(error.message)")
        }
        // Both sides number their codes as google.rpc.Code does. A connection's failure says why in
        // its cause (refused, a certificate not trusted, a handshake the server ended).
        let code = StrataError.Code(rawValue: error.code.rawValue) ?? .unknown
        return StrataError(code, "remote \(endpoint): \(name): \(error.message)\(error.cause.map { " (\($0))" } ?? "")")
    }

    /// The peer's capabilities for the channel's instance, asked once (GetCapabilities) and kept.
    public func serverCapabilities() async throws -> Build_Bazel_Remote_Execution_V2_ServerCapabilities {
        if let known = capabilities.withLock({ $0 }) { return known }
        let answer = try await call("GetCapabilities") { client in
            try await CapabilitiesClient(wrapping: client).getCapabilities(
                .with { $0.instanceName = self.options.instanceName }, options: self.callOptions)
        }
        capabilities.withLock { $0 = answer }
        return answer
    }

    /// The most data bytes one batch call may carry: `configured`, lowered to the peer's
    /// `max_batch_total_size_bytes` when it announces a smaller one. A peer that cannot say now
    /// (unavailable) is asked again next time; one that does not implement Capabilities is not.
    func batchLimit(configured: Int64) async -> Int64 {
        do {
            let announced = try await serverCapabilities().cacheCapabilities.maxBatchTotalSizeBytes
            return announced > 0 ? min(configured, announced) : configured
        } catch let error as StrataError where error.code != .unavailable {
            capabilities.withLock { $0 = $0 ?? Build_Bazel_Remote_Execution_V2_ServerCapabilities() }
            return configured
        } catch {
            return configured
        }
    }
}
