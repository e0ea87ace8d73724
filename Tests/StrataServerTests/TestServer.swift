import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import StrataAPI
import StrataActionCache
import StrataCore
import StrataServer
import StrataStorage

typealias CASClient = Build_Bazel_Remote_Execution_V2_ContentAddressableStorage.Client<HTTP2ClientTransport.Posix>
typealias ByteStreamClient = Google_Bytestream_ByteStream.Client<HTTP2ClientTransport.Posix>
typealias ActionCacheClient = Build_Bazel_Remote_Execution_V2_ActionCache.Client<HTTP2ClientTransport.Posix>
typealias CapabilitiesClient = Build_Bazel_Remote_Execution_V2_Capabilities.Client<HTTP2ClientTransport.Posix>
typealias HealthClient = Grpc_Health_V1_Health.Client<HTTP2ClientTransport.Posix>
typealias ProtoDigest = Build_Bazel_Remote_Execution_V2_Digest

/// Clients of one running server on 127.0.0.1 with an ephemeral port.
struct Clients: Sendable {
    let cas: CASClient
    let byteStream: ByteStreamClient
    let actionCache: ActionCacheClient
    let capabilities: CapabilitiesClient
    let health: HealthClient
    let server: StrataServer
    let port: Int
}

/// Runs `body` against a real server over loopback gRPC, then shuts the server down.
func withServer<T: Sendable>(
    _ instances: [Instance], maxBatchTotalSizeBytes: Int64 = InstanceRegistry.defaultMaxBatchTotalSizeBytes,
    uploads: UploadRegistry = UploadRegistry(), health: HealthStatus = HealthStatus(), accessLog: Logger? = nil,
    metrics: RPCMetrics? = nil,
    modules: [any ServiceModule] = StrataServer.storageModules, interceptors: [any ServerInterceptor] = [],
    _ body: @Sendable (Clients) async throws -> T
) async throws -> T {
    let registry = InstanceRegistry(instances, maxBatchTotalSizeBytes: maxBatchTotalSizeBytes)
    let server = try StrataServer(
        registry: registry, modules: modules, interceptors: interceptors,
        addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))], uploads: uploads,
        health: health, accessLog: accessLog, metrics: metrics)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await server.run()
            return nil
        }
        guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
        let result = try await withGRPCClient(transport: transport) { client in
            try await body(Clients(
                cas: CASClient(wrapping: client), byteStream: ByteStreamClient(wrapping: client),
                actionCache: ActionCacheClient(wrapping: client), capabilities: CapabilitiesClient(wrapping: client),
                health: HealthClient(wrapping: client), server: server, port: port))
        }
        server.beginGracefulShutdown()
        for try await _ in group {}
        return result
    }
}

func memoryInstance(_ name: String = "", readOnly: Bool = false, capacity: Int64 = 256 << 20,
                    cache: (any ActionCache)? = LRUActionCache(maxEntries: 100)) -> Instance {
    let store = LRUBlobStore(capacityBytes: capacity)
    return Instance(
        name: name, cas: .init(store: store, readOnly: readOnly), byteStream: .init(store: store, readOnly: readOnly),
        actionCache: cache)
}

extension Digest {
    var proto: ProtoDigest {
        .with {
            $0.hash = hash
            $0.sizeBytes = sizeBytes
        }
    }
}

func protoDigest(_ hash: String, _ size: Int64) -> ProtoDigest {
    .with {
        $0.hash = hash
        $0.sizeBytes = size
    }
}

/// The status code of an RPC that must fail, with its message.
func rpcFailure(_ operation: () async throws -> Void) async -> (code: RPCError.Code, message: String)? {
    do {
        try await operation()
        return nil
    } catch let error as RPCError {
        return (error.code, error.message)
    } catch {
        return (.unknown, "\(error)")
    }
}

extension ByteStreamClient {
    /// Uploads `data` in `chunkSize` messages starting at `offset`; `finish` sets finish_write on the last.
    func upload(_ resource: String, _ slice: Data, offset: Int64 = 0, chunkSize: Int = 64 << 10, finish: Bool = true) async throws -> Int64 {
        let data = Data(slice)  // zero-based indices
        return try await write(requestProducer: { writer in
            var position = 0
            repeat {
                let end = min(position + chunkSize, data.count)
                let isLast = end == data.count
                try await writer.write(.with {
                    $0.resourceName = position == 0 ? resource : ""
                    $0.writeOffset = offset + Int64(position)
                    $0.data = data[position..<end]
                    $0.finishWrite = finish && isLast
                })
                position = end
            } while position < data.count
        }).committedSize
    }

    func download(_ resource: String, offset: Int64 = 0, limit: Int64 = 0) async throws -> Data {
        try await read(.with {
            $0.resourceName = resource
            $0.readOffset = offset
            $0.readLimit = limit
        }) { response in
            var data = Data()
            for try await message in response.messages { data.append(message.data) }
            return data
        }
    }
}
