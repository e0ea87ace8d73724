import StrataActionCache
import StrataAuth
import StrataCore
import StrataStorage

/// What one instance name serves. A service that is nil answers UNIMPLEMENTED for that instance.
public struct Instance: Sendable {
    public struct StorageService: Sendable {
        public var store: any BlobStore
        public var readOnly: Bool

        public init(store: any BlobStore, readOnly: Bool = false) {
            self.store = store
            self.readOnly = readOnly
        }
    }

    public var name: String
    public var cas: StorageService?
    public var byteStream: StorageService?
    public var actionCache: (any ActionCache)?

    public init(name: String, cas: StorageService? = nil, byteStream: StorageService? = nil, actionCache: (any ActionCache)? = nil) {
        self.name = name
        self.cas = cas
        self.byteStream = byteStream
        self.actionCache = actionCache
    }

    /// The largest blob the instance's storage accepts (Capabilities' max_cas_blob_size_bytes), if any.
    public var maximumBlobSize: Int64? {
        [cas?.store.maximumBlobSize, byteStream?.store.maximumBlobSize].compactMap { $0 }.min()
    }
}

/// The instances of one server, looked up by the `instance_name` of each request.
public struct InstanceRegistry: Sendable {
    public let instances: [String: Instance]
    /// The largest batch (sum of blob sizes) BatchUpdateBlobs and BatchReadBlobs accept; advertised in
    /// Capabilities and enforced, with gRPC's message limit set above it.
    public let maxBatchTotalSizeBytes: Int64

    /// `authorization:`: checked on every lookup, the one place every request's instance becomes known.
    public let accessPolicy: AccessPolicy?

    public static let defaultMaxBatchTotalSizeBytes: Int64 = 4 << 20

    public init(
        _ instances: [Instance], maxBatchTotalSizeBytes: Int64 = InstanceRegistry.defaultMaxBatchTotalSizeBytes,
        accessPolicy: AccessPolicy? = nil
    ) {
        self.instances = Dictionary(instances.map { ($0.name, $0) }, uniquingKeysWith: { _, last in last })
        self.maxBatchTotalSizeBytes = maxBatchTotalSizeBytes
        self.accessPolicy = accessPolicy
    }

    /// Whether the current request may call `method` on `name` (Capabilities' `update_enabled`).
    public func permits(_ method: String, on name: String) -> Bool {
        guard let accessPolicy else { return true }
        guard let context = RequestContext.current else { return false }
        return accessPolicy.permits(context, instance: name, method: method)
    }

    public func instance(_ name: String) throws(StrataError) -> Instance {
        guard let instance = instances[name] else {
            let known = instances.keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
            throw .invalidArgument("unknown instance name \"\(StrataError.echo(name))\"; this server serves \(known)")
        }
        let context = RequestContext.current
        context?.setInstanceName(name)
        if let accessPolicy {
            // A server always sets the context; without one there is no caller to authorize.
            guard let context else { throw StrataError(.permissionDenied, "no request context to authorize") }
            try accessPolicy.authorize(context, instance: name, method: context.method)
        }
        return instance
    }

    func cas(_ name: String) throws(StrataError) -> Instance.StorageService {
        guard let cas = try instance(name).cas else {
            throw .unimplemented("instance \"\(StrataError.echo(name))\" has no ContentAddressableStorage service")
        }
        return cas
    }

    func byteStream(_ name: String) throws(StrataError) -> Instance.StorageService {
        guard let byteStream = try instance(name).byteStream else {
            throw .unimplemented("instance \"\(StrataError.echo(name))\" has no ByteStream service")
        }
        return byteStream
    }

    func actionCache(_ name: String) throws(StrataError) -> any ActionCache {
        guard let cache = try instance(name).actionCache else {
            throw .unimplemented("instance \"\(StrataError.echo(name))\" has no ActionCache service")
        }
        return cache
    }
}
