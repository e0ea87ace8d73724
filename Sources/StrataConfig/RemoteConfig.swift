import ServiceLifecycle
import StrataCore
import StrataRemote

/// The options `!remote-storage` and `!remote-action-cache` share, BuildGrid's `credentials` and
/// `channel-options` included, mapped onto `RemoteChannel.Options`.
extension Builder {
    static let remoteChannelKeys: Set<String> = [
        "url", "instance-name", "retries", "max-backoff", "request-timeout", "credentials", "channel-options",
    ]

    mutating func remoteChannelOptions(_ options: [String: ConfigNode], url: String) throws(ConfigError) -> RemoteChannel.Options {
        var channel = RemoteChannel.Options()
        channel.instanceName = try options["instance-name"]?.string() ?? ""
        channel.retries = try options["retries"]?.int() ?? 3
        channel.maxBackoff = .seconds(try options["max-backoff"]?.int(minimum: 1) ?? 64)
        if let timeout = options["request-timeout"] { channel.requestTimeout = .seconds(try timeout.int(minimum: 1)) }
        if let credentials = options["credentials"] {
            channel.credentials = try remoteCredentials(credentials, url: url)
        }
        if let channelOptions = options["channel-options"] {
            try applyChannelOptions(channelOptions, to: &channel)
        }
        return channel
    }

    /// BuildGrid's client `credentials`: `tls-server-cert` (the CA that signs the server's
    /// certificate), `tls-client-cert` and `tls-client-key` (mutual TLS), `auth-token` (a file holding
    /// the bearer token), `token-refresh-seconds`. As BuildGrid does, TLS files on a plaintext URL
    /// are unused (with a warning), and a token is sent on any URL.
    private mutating func remoteCredentials(_ node: ConfigNode, url: String) throws(ConfigError) -> RemoteCredentials {
        let keys = try node.mapping(allowed: [
            "tls-server-cert", "tls-client-cert", "tls-client-key", "auth-token", "token-refresh-seconds",
            "tls-server-key", "tls-client-certs",
        ])
        var credentials = RemoteCredentials()
        credentials.tlsCAFile = try keys["tls-server-cert"]?.string()
        credentials.tlsClientCertFile = try keys["tls-client-cert"]?.string()
        credentials.tlsClientKeyFile = try keys["tls-client-key"]?.string()
        credentials.tokenFile = try keys["auth-token"]?.string()
        if let refresh = keys["token-refresh-seconds"] {
            _ = try refresh.int(minimum: 1)
            warn(refresh, "is ignored: Strata reads the token file again whenever it changes")
        }
        // BuildGrid's own examples for remote storages carry a server's keys: they mean nothing to a client.
        for key in ["tls-server-key", "tls-client-certs"] {
            if let entry = keys[key] { warn(entry, "is a server's key and is ignored by a remote client (its keys: tls-server-cert, tls-client-cert, tls-client-key, auth-token)") }
        }
        let plaintext: Bool
        do {
            let endpoint = try RemoteEndpoint(url: url)
            if case .host = endpoint.address { plaintext = !endpoint.schemeRequiresTLS } else { plaintext = false }
        } catch {
            plaintext = false  // the URL's own error is reported where the channel is made
        }
        if plaintext && credentials.hasTLSFiles {
            warn(node, "TLS files are ignored: \(url) is plaintext (use grpcs:// or https:// for TLS)")
            credentials.tlsCAFile = nil
            credentials.tlsClientCertFile = nil
            credentials.tlsClientKeyFile = nil
        }
        return credentials
    }

    /// BuildGrid's `channel-options` (gRPC core's channel arguments, `-` for `_`): those with an
    /// equivalent set it; the others, such as `lb-policy-name`, change nothing and are named in a warning.
    private mutating func applyChannelOptions(_ node: ConfigNode, to channel: inout RemoteChannel.Options) throws(ConfigError) {
        guard case .mapping(let mapping) = node.node else { throw node.error("expected a mapping of gRPC channel options") }
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw node.child(keyNode, "?").error("keys must be strings") }
            let entry = node.child(value, key)
            switch key {
            case "keepalive-time-ms": channel.keepaliveTime = .milliseconds(try entry.int(minimum: 1))
            case "keepalive-timeout-ms": channel.keepaliveTimeout = .milliseconds(try entry.int(minimum: 1))
            case "max-receive-message-length": channel.maxReceiveMessageBytes = try messageLength(entry)
            case "max-send-message-length": channel.maxSendMessageBytes = try messageLength(entry)
            default: warn(entry, "is ignored: Strata's gRPC client has no such channel option")
            }
        }
    }

    /// A gRPC message length: bytes, or -1 for no limit.
    private func messageLength(_ node: ConfigNode) throws(ConfigError) -> Int {
        let value = try node.int(minimum: -1)
        guard value != 0 else { throw node.error("must be a number of bytes, or -1 for no limit") }
        return value == -1 ? Int.max : value
    }

    private mutating func warn(_ node: ConfigNode, _ message: String) {
        warnings.append("\(node.file):\(node.line ?? 0): \(node.path) \(message)")
    }
}

/// Keeps a remote storage's or action cache's gRPC channel while the server runs.
struct RemoteChannelService: Service {
    let channel: RemoteChannel

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await channel.run()
        } onGracefulShutdown: {
            channel.shutdown()
        }
    }
}

