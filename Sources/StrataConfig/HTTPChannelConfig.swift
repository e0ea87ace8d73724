import Logging
import StrataCore
import StrataHTTP
import StrataHTTPCache
import StrataServer

/// One `!http-channel` of `server:`: Bazel's HTTP cache protocol (`--remote_cache=http://…`) on
/// `address`, for `instance-name` (default "") and any instance named by a path prefix.
public struct HTTPCacheChannel: Sendable {
    public var host: String
    public var port: Int
    public var settings: HTTPCache.Settings
    /// `insecure-mode: false` with `credentials`: served over TLS (HTTPS).
    public var tls: TLSCredentials?
    /// Where `credentials` is, for `checkTLSFiles`' messages.
    var credentialsLocation: ConfigLocation?
}

extension Builder {
    /// `!http-channel`: `address`, `instance-name`, `max-body-size`, `blob-size-index-entries`, and
    /// `insecure-mode` / `credentials` with the keys and meaning of `!channel`'s.
    mutating func httpChannel(_ node: ConfigNode) throws(ConfigError) -> HTTPCacheChannel {
        try requireTag(node, "!http-channel")
        let options = try node.mapping(allowed: [
            "address", "instance-name", "insecure-mode", "credentials", "max-body-size", "blob-size-index-entries",
        ])
        guard let addressNode = options["address"] else { throw node.error("!http-channel needs an address, e.g. \"127.0.0.1:8080\"") }
        let address: ListenAddress
        do {
            address = try ListenAddress(parsing: try addressNode.string())
        } catch let error as ConfigError {
            throw error
        } catch {
            throw addressNode.error((error as? StrataError)?.message ?? "\(error)")
        }
        guard case .tcp(let host, let port) = address.kind else {
            throw addressNode.error("!http-channel listens on TCP (host:port), not on a unix socket")
        }
        var settings = HTTPCache.Settings(instanceName: try options["instance-name"]?.string() ?? "")
        if let size = options["max-body-size"] {
            settings.maxBodyBytes = try size.size()
            guard settings.maxBodyBytes > 0 else { throw size.error("max-body-size must be more than 0") }
        }
        if let entries = options["blob-size-index-entries"] {
            blobSizeIndexEntries = max(blobSizeIndexEntries ?? 0, try entries.int(minimum: 1))
        }
        httpInstanceNodes.append((settings.instanceName, options["instance-name"] ?? node))
        var channel = HTTPCacheChannel(host: host, port: port, settings: settings)
        if let (tls, location) = try serverTLS(node, options) {
            channel.tls = tls
            channel.credentialsLocation = location
        }
        return channel
    }

    /// With an `!http-channel`, each instance's CAS and action cache are decorated to share blob sizes
    /// and hash-only action keys with the HTTP side (`SizeRecordingBlobStore`, `HashKeyedActionCache`).
    /// A channel's `instance-name` must be configured.
    mutating func servingHTTPCache(_ instances: [Instance], complete: Bool) -> (instances: [Instance], indexes: [String: BlobSizeIndex]) {
        let names = Set(instances.map(\.name))
        if complete {
            for (name, node) in httpInstanceNodes where !names.contains(name) {
                let known = names.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
                record(node.error("instance-name \"\(name)\" is not a configured instance; configured: \(known)"))
            }
        }
        var indexes: [String: BlobSizeIndex] = [:]
        let decorated = instances.map { instance in
            var instance = instance
            let index = BlobSizeIndex(capacity: blobSizeIndexEntries ?? BlobSizeIndex.defaultCapacity)
            indexes[instance.name] = index
            if var cas = instance.cas {
                cas.store = SizeRecordingBlobStore(cas.store, index: index)
                instance.cas = cas
            }
            if var byteStream = instance.byteStream {
                byteStream.store = SizeRecordingBlobStore(byteStream.store, index: index)
                instance.byteStream = byteStream
            }
            if let cache = instance.actionCache { instance.actionCache = HashKeyedActionCache(cache, index: index) }
            return instance
        }
        return (decorated, indexes)
    }
}

extension Configuration {
    /// What is wrong with the `!http-channel`s' TLS files, located at their `credentials` (`checkTLSFiles`).
    func checkHTTPTLSFiles() -> [ConfigError] {
        httpCaches.compactMap { channel in
            guard let credentials = channel.tls, let location = channel.credentialsLocation else { return nil }
            do throws(StrataError) {
                _ = try HTTPCache.tlsConfiguration(credentials)
                return nil
            } catch {
                return ConfigError(file: location.file, line: location.line, path: location.path, message: error.message)
            }
        }
    }

    /// The listeners of the `!http-channel`s, serving the instances of `registry` (the gRPC server's).
    /// Reads the TLS files: a missing or bad one is an error naming it.
    public func httpCacheListeners(accessLog: Logger?, logger: Logger) throws(StrataError) -> [HTTPListener] {
        let registry = self.registry
        return try httpCaches.map { (channel) throws(StrataError) in
            let cache = HTTPCache(
                settings: channel.settings, registry: registry, sizeIndexes: blobSizeIndexes,
                authentication: authentication, accessLog: accessLog.map { AccessLogInterceptor(logger: $0) },
                metrics: monitoring?.rpcMetrics)
            let secured = try channel.tls.map { (credentials) throws(StrataError) in
                try HTTPCache.servingTLS(credentials, address: "http-channel \(channel.host):\(channel.port)", logger: logger)
            }
            return HTTPListener(
                host: channel.host, port: channel.port, routes: cache.routes, purpose: "HTTP cache (instance \"\(channel.settings.instanceName)\")",
                logger: logger, tls: secured?.configuration, runningAlongside: secured.map { [$0.reload] } ?? [],
                answersExpectContinue: true)
        }
    }
}
