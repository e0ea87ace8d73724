import GRPCCore
import Logging

/// What a module's gRPC services are built with: the parts one server shares among them.
public struct ServerEnvironment: Sendable {
    /// The instances the configuration built, each with the services it has.
    public let registry: InstanceRegistry
    /// ByteStream uploads parked between calls (resumable writes).
    public let uploads: UploadRegistry
    public let logger: Logger

    public init(registry: InstanceRegistry, uploads: UploadRegistry, logger: Logger) {
        self.registry = registry
        self.uploads = uploads
        self.logger = logger
    }
}

/// One concern's gRPC services (storage, capabilities, health; later execution, operations, bots),
/// made once the server's shared parts exist. The configuration lists the modules it built; the server
/// registers the services they make on every listener. A module for a new kind of service is a new
/// type here plus its lines in the configuration parser: the server and `Instance` do not change.
public protocol ServiceModule: Sendable {
    func rpcServices(_ environment: ServerEnvironment) -> [any RegistrableRPCService]
}

/// ContentAddressableStorage, ByteStream and ActionCache: each registered when some instance has it
/// (an instance without it answers UNIMPLEMENTED, naming the instance; a server where no instance has
/// it answers UNIMPLEMENTED as gRPC does for any unknown service).
public struct StorageServicesModule: ServiceModule {
    public init() {}

    public func rpcServices(_ environment: ServerEnvironment) -> [any RegistrableRPCService] {
        let registry = environment.registry
        var services: [any RegistrableRPCService] = []
        if registry.anyInstanceHas(Instance.ContentAddressableStorage.self) {
            services.append(ContentAddressableStorageWireService(service: ContentAddressableStorageService(registry: registry)))
        }
        if registry.anyInstanceHas(Instance.ByteStream.self) {
            services.append(ByteStreamService(registry: registry, uploads: environment.uploads))
        }
        if registry.anyInstanceHas(Instance.ActionCacheService.self) {
            services.append(ActionCacheService(registry: registry))
        }
        return services
    }
}

/// Capabilities, which every REAPI client calls first: always registered.
public struct CapabilitiesModule: ServiceModule {
    public init() {}

    public func rpcServices(_ environment: ServerEnvironment) -> [any RegistrableRPCService] {
        [CapabilitiesService(registry: environment.registry)]
    }
}

extension StrataServer {
    /// The modules of a storage server: what `strata serve` runs when the configuration adds none.
    public static let storageModules: [any ServiceModule] = [CapabilitiesModule(), StorageServicesModule()]
}
