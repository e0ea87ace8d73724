import StrataActionCache
import StrataAuth
import StrataCore
import StrataStorage

/// Names one kind of service an instance can have, and the type of what serves it: the key of an
/// `Instance`'s service map. A module adds its kind by declaring a key next to its gRPC service
/// (Execution, Bots, ...), without touching `Instance`.
public protocol InstanceServiceKey {
    associatedtype Value: Sendable
    /// The gRPC service's short name, for errors: "instance "x" has no ContentAddressableStorage service".
    static var serviceName: String { get }
}

/// What one instance name serves: a map from service kind to what serves it. A kind the instance does
/// not have answers UNIMPLEMENTED for that instance.
public struct Instance: Sendable {
    /// A storage as a CAS or ByteStream service uses it.
    public struct StorageService: Sendable {
        public var store: any BlobStore
        public var readOnly: Bool

        public init(store: any BlobStore, readOnly: Bool = false) {
            self.store = store
            self.readOnly = readOnly
        }
    }

    public enum ContentAddressableStorage: InstanceServiceKey {
        public typealias Value = StorageService
        public static let serviceName = "ContentAddressableStorage"
    }

    public enum ByteStream: InstanceServiceKey {
        public typealias Value = StorageService
        public static let serviceName = "ByteStream"
    }

    public enum ActionCacheService: InstanceServiceKey {
        public typealias Value = any StrataActionCache.ActionCache
        public static let serviceName = "ActionCache"
    }

    public var name: String
    private var services: [ObjectIdentifier: any Sendable] = [:]

    public init(name: String) { self.name = name }

    /// An instance with the storage services (the common case, and the tests').
    public init(name: String, cas: StorageService? = nil, byteStream: StorageService? = nil, actionCache: (any ActionCache)? = nil) {
        self.name = name
        self.cas = cas
        self.byteStream = byteStream
        self.actionCache = actionCache
    }

    /// What serves `key`'s kind for this instance, or nil when it has none.
    public subscript<Key: InstanceServiceKey>(_ key: Key.Type) -> Key.Value? {
        get { services[ObjectIdentifier(key)] as? Key.Value }
        set { services[ObjectIdentifier(key)] = newValue }
    }

    /// Whether the instance has a service of `key`'s kind.
    public func has<Key: InstanceServiceKey>(_ key: Key.Type) -> Bool { services[ObjectIdentifier(key)] != nil }

    public var cas: StorageService? {
        get { self[ContentAddressableStorage.self] }
        set { self[ContentAddressableStorage.self] = newValue }
    }

    public var byteStream: StorageService? {
        get { self[ByteStream.self] }
        set { self[ByteStream.self] = newValue }
    }

    public var actionCache: (any ActionCache)? {
        get { self[ActionCacheService.self] }
        set { self[ActionCacheService.self] = newValue }
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

    /// Whether any instance has a service of `key`'s kind: the server registers only those.
    public func anyInstanceHas<Key: InstanceServiceKey>(_ key: Key.Type) -> Bool {
        instances.values.contains { $0.has(key) }
    }

    /// The instance a request names; the one place every service resolves it, which records it in the
    /// request's context (for logs, metrics and authorization).
    ///
    /// With an access policy the caller is authorized first, so a caller without valid credentials (or
    /// not allowed there) learns nothing of which instances exist: UNAUTHENTICATED or PERMISSION_DENIED,
    /// never the list of instance names.
    public func instance(_ name: String) throws(StrataError) -> Instance {
        let context = RequestContext.current
        let instance = instances[name]
        // Only a name the server has is recorded (logs and metrics label by it; a made-up one would
        // add a label per request).
        if instance != nil { context?.setInstanceName(name) }
        if let accessPolicy {
            // A server always sets the context; without one there is no caller to authorize.
            guard let context else { throw StrataError(.permissionDenied, "no request context to authorize") }
            try accessPolicy.authorize(context, instance: name, method: context.method)
        }
        guard let instance else {
            let known = instances.keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
            throw .invalidArgument("unknown instance name \"\(StrataError.echo(name))\"; this server serves \(known)")
        }
        return instance
    }

    /// What serves `key`'s kind for the instance `name`; UNIMPLEMENTED when it has none.
    public func service<Key: InstanceServiceKey>(_ key: Key.Type, of name: String) throws(StrataError) -> Key.Value {
        try service(key, in: try instance(name))
    }

    /// What serves `key`'s kind for `instance`, already looked up (and authorized) with `instance(_:)`.
    public func service<Key: InstanceServiceKey>(_ key: Key.Type, in instance: Instance) throws(StrataError) -> Key.Value {
        guard let service = instance[key] else {
            throw .unimplemented("instance \"\(StrataError.echo(instance.name))\" has no \(Key.serviceName) service")
        }
        return service
    }

    func cas(_ name: String) throws(StrataError) -> Instance.StorageService {
        try service(Instance.ContentAddressableStorage.self, of: name)
    }

    func byteStream(_ name: String) throws(StrataError) -> Instance.StorageService {
        try service(Instance.ByteStream.self, of: name)
    }

    func actionCache(_ name: String) throws(StrataError) -> any ActionCache {
        try service(Instance.ActionCacheService.self, of: name)
    }
}
