import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataServer
import StrataAPI
import StrataCore
import StrataProto

typealias CASClient = Build_Bazel_Remote_Execution_V2_ContentAddressableStorage.Client<HTTP2ClientTransport.Posix>
typealias ByteStreamClient = Google_Bytestream_ByteStream.Client<HTTP2ClientTransport.Posix>
typealias ActionCacheClient = Build_Bazel_Remote_Execution_V2_ActionCache.Client<HTTP2ClientTransport.Posix>
typealias CapabilitiesClient = Build_Bazel_Remote_Execution_V2_Capabilities.Client<HTTP2ClientTransport.Posix>

/// What one benchmark run does.
public enum Scenario: String, CaseIterable, Sendable, Codable {
    /// FindMissingBlobs with `batch` digests per request, all stored.
    case findMissingPresent = "fmb-present"
    /// FindMissingBlobs with `batch` digests per request, none stored.
    case findMissingMissing = "fmb-missing"
    /// BatchUpdateBlobs of `batch` new blobs of `blobSize` bytes.
    case batchUpdate = "batch-update"
    /// BatchReadBlobs of `batch` stored blobs of `blobSize` bytes.
    case batchRead = "batch-read"
    /// ByteStream Write of a new blob of `blobSize` bytes.
    case byteStreamWrite = "bytestream-write"
    /// ByteStream Read of a stored blob of `blobSize` bytes.
    case byteStreamRead = "bytestream-read"
    /// UpdateActionResult then GetActionResult of a new action.
    case actionCache = "ac"
    /// What a Bazel build does per action on a cold cache: look up, upload outputs, store the result,
    /// then on a warm build look up, check outputs, download.
    case bazelMix = "bazel-mix"
    /// GetCapabilities: the cost of an RPC that does nothing, client and server together. No unary call
    /// (an action-cache look-up, say) can go faster than this through the same gRPC stack.
    case rpcFloor = "rpc-floor"
}

public struct BenchmarkOptions: Sendable, Codable {
    public var host = "127.0.0.1"
    public var port = 50051
    public var instanceName = ""
    public var scenario = Scenario.findMissingPresent
    public var concurrency = 4
    public var duration: Double = 5
    /// Digests or blobs per request.
    public var batch = 1000
    public var blobSize = 4096
    /// The server's pid, to report its CPU time and peak RSS.
    public var serverPID: Int32?
    /// Stop after this many operations (for very large blobs), even before `duration`.
    public var maxOperations: Int?
    /// Headers sent with every call (`authorization: Bearer …` for a server that asks for a token).
    public var headers: [String: String] = [:]

    public init() {}

    static let http2WindowBytes = 16 << 20
    static let http2MaxFrameBytes = 1 << 20
}

public struct BenchmarkResult: Sendable, Codable {
    public var scenario: Scenario
    public var options: BenchmarkOptions
    public var operations: Int
    /// Items per operation: digests, blobs, or 1.
    public var itemsPerOperation: Int
    public var payloadBytes: Int64
    public var seconds: Double
    public var p50Milliseconds: Double
    public var p99Milliseconds: Double
    public var serverCPUSeconds: Double?
    public var serverPeakRSSBytes: Int64?
    public var serverRSSBeforeBytes: Int64?

    public var operationsPerSecond: Double { Double(operations) / seconds }
    public var itemsPerSecond: Double { Double(operations * itemsPerOperation) / seconds }
    public var megabytesPerSecond: Double { Double(payloadBytes) / seconds / 1e6 }
}

/// A counter shared by workers, so every generated blob is new.
final class Serial: Sendable {
    private let value = Synchronized<UInt64>(UInt64.random(in: 0..<(1 << 40)))
    func next() -> UInt64 { value.update { $0 += 1; return $0 } }
}

final class Synchronized<Value: Sendable>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func update<T>(_ body: (inout Value) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}

public enum Benchmark {
    public static func run(_ options: BenchmarkOptions) async throws -> BenchmarkResult {
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.http2.targetWindowSize = BenchmarkOptions.http2WindowBytes
        // The frame size the server may send: at HTTP/2's default 16 KiB, a 64 MiB read is 4096 frames,
        // each parsed and accounted for separately.
        config.http2.maxFrameSize = BenchmarkOptions.http2MaxFrameBytes
        // One event loop for the connection and every worker task, as the server runs each listener:
        // the client then never hops between threads per call, and leaves the server more CPU.
        let loop = SharedEventLoops.shared[SharedEventLoops.shared.count - 1]
        let transport = try HTTP2ClientTransport.Posix(
            target: .ipv4(address: options.host, port: options.port), transportSecurity: .plaintext, config: config,
            eventLoopGroup: loop)
        return try await withTaskExecutorPreference(EventLoopTaskExecutor(loop.next())) {
            try await measure(options, transport: transport)
        }
    }

    private static func measure(
        _ options: BenchmarkOptions, transport: HTTP2ClientTransport.Posix
    ) async throws -> BenchmarkResult {
        try await withGRPCClient(transport: transport, interceptors: [HeaderInterceptor(headers: options.headers)]) { client in
            let clients = Clients(
                grpc: client, cas: CASClient(wrapping: client), byteStream: ByteStreamClient(wrapping: client),
                actionCache: ActionCacheClient(wrapping: client), capabilities: CapabilitiesClient(wrapping: client),
                options: options)
            let operation = try await clients.prepare()
            let before = options.serverPID.flatMap(ProcessUsage.read)
            let start = ContinuousClock.now
            let deadline = start + .milliseconds(Int(options.duration * 1000))
            let remaining = Synchronized(options.maxOperations ?? Int.max)
            let latencies = try await withThrowingTaskGroup(of: [Duration].self) { group in
                for _ in 0..<options.concurrency {
                    group.addTask {
                        var latencies: [Duration] = []
                        while ContinuousClock.now < deadline, remaining.update({ count in
                            guard count > 0 else { return false }
                            count -= 1
                            return true
                        }) {
                            let began = ContinuousClock.now
                            try await operation()
                            latencies.append(ContinuousClock.now - began)
                        }
                        return latencies
                    }
                }
                var all: [Duration] = []
                for try await latencies in group { all += latencies }
                return all.sorted()
            }
            let seconds = (ContinuousClock.now - start).timeInterval
            let after = options.serverPID.flatMap(ProcessUsage.read)
            func percentile(_ p: Double) -> Double {
                guard !latencies.isEmpty else { return 0 }
                return latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))].timeInterval * 1000
            }
            return BenchmarkResult(
                scenario: options.scenario, options: options, operations: latencies.count,
                itemsPerOperation: clients.itemsPerOperation,
                payloadBytes: Int64(latencies.count) * clients.payloadBytesPerOperation, seconds: seconds,
                p50Milliseconds: percentile(0.5), p99Milliseconds: percentile(0.99),
                serverCPUSeconds: before.flatMap { before in after.map { $0.cpuSeconds - before.cpuSeconds } },
                serverPeakRSSBytes: after?.peakRSSBytes, serverRSSBeforeBytes: before?.rssBytes)
        }
    }
}


/// Adds the benchmark's fixed headers to every call.
struct HeaderInterceptor: ClientInterceptor {
    let headers: [String: String]

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingClientRequest<Input>,
        context: ClientContext,
        next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
    ) async throws -> StreamingClientResponse<Output> {
        var request = request
        for (key, value) in headers { request.metadata.addString(value, forKey: key) }
        return try await next(request, context)
    }
}
