import GRPCCore
import StrataAPI
import StrataCore
import StrataProto

/// Capabilities: `cache_capabilities` from the instance's storage services, and
/// `execution_capabilities` when the instance has an Execution service.
public struct CapabilitiesService: Build_Bazel_Remote_Execution_V2_Capabilities.SimpleServiceProtocol {
    let registry: InstanceRegistry

    public init(registry: InstanceRegistry) { self.registry = registry }

    public func getCapabilities(
        request: Build_Bazel_Remote_Execution_V2_GetCapabilitiesRequest, context: ServerContext
    ) async throws -> Build_Bazel_Remote_Execution_V2_ServerCapabilities {
        let instance = try registry.instance(request.instanceName)
        return .with {
            $0.lowApiVersion = .with { $0.major = 2; $0.minor = 0 }
            $0.highApiVersion = .with { $0.major = 2; $0.minor = 12 }
            $0.cacheCapabilities = .with {
                $0.digestFunctions = DigestFunction.supported.map(\.proto)
                $0.actionCacheUpdateCapabilities = .with {
                    // Per caller: false when the ACL does not let this one write results here.
                    $0.updateEnabled = (instance.actionCache?.allowsUpdates ?? false)
                        && registry.permits("UpdateActionResult", on: request.instanceName)
                }
                $0.maxBatchTotalSizeBytes = registry.maxBatchTotalSizeBytes
                $0.maxCasBlobSizeBytes = instance.maximumBlobSize ?? 0
                // Action results are stored as given; absolute symlinks are not rejected.
                $0.symlinkAbsolutePathStrategy = .allowed
                $0.supportedCompressors = BlobCompressor.advertised.map(\.proto)
                $0.supportedBatchUpdateCompressors = BlobCompressor.advertised.map(\.proto)
                // Only where the instance's !cas has enable-chunking; splicing also needs it writable.
                let chunker = instance[Instance.BlobChunking.self]
                $0.splitBlobSupport = chunker != nil
                $0.spliceBlobSupport = chunker != nil && instance.cas?.readOnly == false
                if let parameters = chunker?.parameters {
                    $0.fastCdc2020Params = .with {
                        $0.avgChunkSizeBytes = UInt64(parameters.averageSize)
                        $0.seed = parameters.seed
                    }
                }
            }
            if instance[Instance.RemoteExecution.self] != nil {
                $0.executionCapabilities = .with {
                    $0.execEnabled = true
                    // The deprecated single field, for clients older than v2.3: the default function.
                    $0.digestFunction = DigestFunction.sha256.proto
                    $0.digestFunctions = DigestFunction.supported.map(\.proto)
                }
            }
        }
    }
}

extension Instance {
    /// Set on an instance with an Execution service, so Capabilities (which cannot see the execution
    /// module) announces `execution_capabilities.exec_enabled`.
    public enum RemoteExecution: InstanceServiceKey {
        public typealias Value = Bool
        public static let serviceName = "Execution"
    }
}
