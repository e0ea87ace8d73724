import StrataCore
import StrataServer

/// One `!channel` of `server:`: where it listens, its connection options, and its TLS.
struct Channel {
    var address: ListenAddress
    var policy: ConnectionPolicy
    var tls: TLSCredentials?
    /// Where `credentials` is, for `checkTLSFiles`' messages.
    var credentialsLocation: ConfigLocation?
}

/// A place in a configuration file, for a problem found after loading.
struct ConfigLocation: Sendable {
    let file: String
    let line: Int?
    let path: String
}

extension Configuration {
    /// Reads every `!channel`'s TLS files as `serve` would (changing nothing) and returns what is wrong
    /// with them, located at their `credentials`: for `strata config check`. Loading the configuration
    /// does not read them, so that the maintenance commands run where the certificates are not.
    public func checkTLSFiles() -> [ConfigError] {
        addresses.compactMap { address in
            guard let credentials = tls[address], let location = tlsLocations[address] else { return nil }
            do throws(StrataError) {
                try credentials.check()
                return nil
            } catch {
                return ConfigError(file: location.file, line: location.line, path: location.path, message: error.message)
            }
        } + checkHTTPTLSFiles()
    }
}

extension Builder {
    /// A `!channel`: `address`, `insecure-mode` and `credentials` as BuildGrid has them, and Strata's
    /// connection options.
    ///
    /// `insecure-mode: false` serves TLS with `credentials` (mutual TLS when `tls-client-certs` is set);
    /// `insecure-mode: true` serves plaintext, and credentials next to it are ignored with a warning.
    /// Without `insecure-mode`, a channel with credentials is TLS and one without is plaintext.
    mutating func channel(_ node: ConfigNode) throws(ConfigError) -> Channel {
        try requireTag(node, "!channel")
        let options = try node.mapping(allowed: [
            "address", "insecure-mode", "credentials", "idle-timeout", "preface-timeout", "max-connections",
            "max-concurrent-streams",
        ])
        guard let addressNode = options["address"] else { throw node.error("!channel needs an address, e.g. \"127.0.0.1:50051\"") }
        // BuildGrid's grpc-server-options first; the channel's own options win.
        var policy = serverConnectionPolicy
        if let idle = options["idle-timeout"] { policy.idleTimeout = try idle.seconds() }
        if let preface = options["preface-timeout"] { policy.prefaceTimeout = try preface.seconds() }
        if let limit = options["max-connections"] { policy.maxConnections = try limit.int(minimum: 1) }
        if let streams = options["max-concurrent-streams"] {
            // HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS is 31 bits.
            policy.maxConcurrentStreams = try streams.int(minimum: 1)
            guard policy.maxConcurrentStreams <= Int(Int32.max) else { throw streams.error("must be at most \(Int32.max)") }
        }
        let addressText = try addressNode.string()
        let address: ListenAddress
        do {
            address = try ListenAddress(parsing: addressText)
        } catch {
            throw addressNode.error(error.message)
        }
        var channel = Channel(address: address, policy: policy)
        if let (tls, location) = try serverTLS(node, options) {
            channel.tls = tls
            channel.credentialsLocation = location
        }
        return channel
    }

    /// A listener's `insecure-mode` and `credentials` (`!channel` and `!http-channel` alike): nil for
    /// plaintext, else the TLS files and where they are configured. `credentials` under
    /// `insecure-mode: true` is ignored with a warning.
    mutating func serverTLS(
        _ node: ConfigNode, _ options: [String: ConfigNode]
    ) throws(ConfigError) -> (TLSCredentials, ConfigLocation)? {
        let credentialsNode = options["credentials"]
        let insecure = try options["insecure-mode"]?.bool() ?? (credentialsNode == nil)
        if insecure {
            if let credentialsNode {
                warnings.append("\(credentialsNode.file):\(credentialsNode.line ?? 0): \(credentialsNode.path): ignored: insecure-mode: true serves plaintext (set insecure-mode: false for TLS)")
            }
            return nil
        }
        guard let credentialsNode else {
            throw (options["insecure-mode"] ?? node).error(
                "insecure-mode: false needs credentials: {tls-server-key, tls-server-cert} (and tls-client-certs for mutual TLS)")
        }
        let credentials = try credentialsNode.mapping(allowed: ["tls-server-key", "tls-server-cert", "tls-client-certs"])
        guard let key = credentials["tls-server-key"], let certificate = credentials["tls-server-cert"] else {
            throw credentialsNode.error("TLS needs tls-server-key and tls-server-cert (PEM files)")
        }
        let tls = TLSCredentials(
            serverKeyPath: try key.string(), serverCertificatePath: try certificate.string(),
            clientCertificateAuthoritiesPath: try credentials["tls-client-certs"]?.string())
        return (tls, ConfigLocation(file: credentialsNode.file, line: credentialsNode.line, path: credentialsNode.path))
    }

    /// BuildGrid's top-level `maximum-concurrent-rpcs: N` and `limiter: {concurrent-request-limit: N}`
    /// (0 there: no limit).
    func concurrencyLimits(_ top: [String: ConfigNode]) throws(ConfigError) -> [ConcurrencyLimit] {
        var limits: [ConcurrencyLimit] = []
        if let node = top["maximum-concurrent-rpcs"] {
            limits.append(ConcurrencyLimit(name: "maximum-concurrent-rpcs", maxInFlight: try node.int(minimum: 1)))
        }
        if let limiter = top["limiter"] {
            let options = try limiter.mapping(allowed: ["concurrent-request-limit"])
            if let node = options["concurrent-request-limit"], case let limit = try node.int(minimum: 0), limit > 0 {
                limits.append(ConcurrencyLimit(name: "limiter.concurrent-request-limit", maxInFlight: limit))
            }
        }
        return limits
    }
}
