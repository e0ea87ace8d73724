import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataActionCache
import StrataCore
import StrataExecution
import StrataProto
import StrataScheduler
import StrataServer
import StrataStorage
import SwiftProtobuf

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}

typealias ExecutionClient = Build_Bazel_Remote_Execution_V2_Execution.Client<HTTP2ClientTransport.Posix>
typealias OperationsClient = Google_Longrunning_Operations.Client<HTTP2ClientTransport.Posix>
typealias BotsClient = Google_Devtools_Remoteworkers_V1test2_Bots.Client<HTTP2ClientTransport.Posix>
typealias CapabilitiesClient = Build_Bazel_Remote_Execution_V2_Capabilities.Client<HTTP2ClientTransport.Posix>
typealias ActionMessage = Build_Bazel_Remote_Execution_V2_Action
typealias ActionResult = Build_Bazel_Remote_Execution_V2_ActionResult
typealias ExecuteResponse = Build_Bazel_Remote_Execution_V2_ExecuteResponse
typealias OperationMetadata = Build_Bazel_Remote_Execution_V2_ExecuteOperationMetadata

/// A real server on 127.0.0.1:0 serving CAS, action cache, Execution, Operations and Bots for the
/// instance "main" on an in-memory scheduler, with clients for each.
struct ExecutionServer: Sendable {
    static let instance = "main"
    let scheduler: InMemoryScheduler
    let store: LRUBlobStore
    let cache: any ActionCache
    let execution: ExecutionClient
    let operations: OperationsClient
    let bots: BotsClient
    let capabilities: CapabilitiesClient
    let server: StrataServer

    /// Stores an Action running `arguments` (with an empty input root) and answers its digest.
    func storeAction(
        _ arguments: [String], platform: [(String, String)] = [], doNotCache: Bool = false, timeout: Duration? = nil,
        storeCommand: Bool = true, storeInputRoot: Bool = true, function: DigestFunction = .sha256
    ) async throws -> Digest {
        let command = Build_Bazel_Remote_Execution_V2_Command.with {
            $0.arguments = arguments
            $0.platform.properties = platform.map { property in .with { $0.name = property.0; $0.value = property.1 } }
        }
        let commandData: Data = try command.serializedBytes()
        let commandDigest = Digest.of(commandData, function: function)
        // Not the empty Directory: the empty blob is always present, and the tests want it missing at times.
        let root = Build_Bazel_Remote_Execution_V2_Directory.with {
            $0.files = [.with { $0.name = "empty"; $0.digest = Digest.empty(function).proto }]
        }
        let rootData: Data = try root.serializedBytes()
        let rootDigest = Digest.of(rootData, function: function)
        if storeCommand { try await store.write(commandDigest, data: commandData) }
        if storeInputRoot { try await store.write(rootDigest, data: rootData) }
        let action = ActionMessage.with {
            $0.commandDigest = commandDigest.proto
            $0.inputRootDigest = rootDigest.proto
            $0.doNotCache = doNotCache
            if let timeout { $0.timeout = .with { $0.seconds = timeout.components.seconds } }
        }
        let actionData: Data = try action.serializedBytes()
        let digest = Digest.of(actionData, function: function)
        try await store.write(digest, data: actionData)
        return digest
    }

    func executeRequest(_ digest: Digest, skipCacheLookup: Bool = false, priority: Int32 = 0) -> Build_Bazel_Remote_Execution_V2_ExecuteRequest {
        .with {
            $0.instanceName = Self.instance
            $0.digestFunction = digest.function.proto
            $0.actionDigest = digest.proto
            $0.skipCacheLookup = skipCacheLookup
            $0.executionPolicy.priority = priority
        }
    }

    /// Execute, collecting the stream's operations until `until` says stop (or the stream ends).
    func execute(
        _ request: Build_Bazel_Remote_Execution_V2_ExecuteRequest, until: @escaping @Sendable ([Google_Longrunning_Operation]) -> Bool = { _ in false }
    ) async throws -> [Google_Longrunning_Operation] {
        try await execution.execute(request, options: Self.callOptions) { response in
            var operations: [Google_Longrunning_Operation] = []
            for try await operation in response.messages {
                operations.append(operation)
                if until(operations) { break }
            }
            return operations
        }
    }

    /// The first operation of an Execute stream: the operation's name, once it is queued.
    func startExecution(_ digest: Digest, skipCacheLookup: Bool = false) async throws -> Google_Longrunning_Operation {
        try await execute(executeRequest(digest, skipCacheLookup: skipCacheLookup)) { _ in true }[0]
    }

    func waitExecution(_ name: String) async throws -> [Google_Longrunning_Operation] {
        try await execution.waitExecution(.with { $0.name = name }, options: Self.callOptions) { response in
            var operations: [Google_Longrunning_Operation] = []
            for try await operation in response.messages { operations.append(operation) }
            return operations
        }
    }

    func createBot(_ id: String, properties: [(String, String)] = [], capacity: Int? = nil) async throws -> BotSession {
        try await bots.createBotSession(.with { request in
            request.parent = Self.instance
            request.botSession.botID = id
            request.botSession.status = .ok
            request.botSession.worker.properties = properties.map { property in .with { $0.key = property.0; $0.value = property.1 } }
            if let capacity { request.botSession.worker.configs = [.with { $0.key = "capacity"; $0.value = "\(capacity)" }] }
        }, options: Self.callOptions)
    }

    func update(_ session: BotSession, timeout: Duration = .seconds(60)) async throws -> BotSession {
        var options = CallOptions.defaults
        options.timeout = timeout
        return try await bots.updateBotSession(.with {
            $0.name = session.name
            $0.botSession = session
        }, options: options)
    }

    static var callOptions: CallOptions {
        var options = CallOptions.defaults
        options.timeout = .seconds(60)
        return options
    }
}

/// Runs `body` against a fresh `ExecutionServer`, then shuts it down.
func withExecutionServer<T: Sendable>(
    settings: SchedulerSettings = SchedulerSettings(), options: ExecutionServiceOptions = ExecutionServiceOptions(),
    cache: any ActionCache = LRUActionCache(maxEntries: 100),
    scheduler shared: InMemoryScheduler? = nil, store sharedStore: LRUBlobStore? = nil,
    _ body: @Sendable (ExecutionServer) async throws -> T
) async throws -> T {
    // Two servers given one scheduler and store are two processes of one deployment.
    let scheduler = shared ?? InMemoryScheduler(settings: settings)
    let store = sharedStore ?? LRUBlobStore(capacityBytes: 64 << 20)
    let backend = ExecutionBackend(scheduler: scheduler, storage: store, actionCache: cache)
    var instance = Instance(name: ExecutionServer.instance, cas: .init(store: store), byteStream: .init(store: store), actionCache: cache)
    instance[Instance.Execution.self] = ExecutionEndpoint(backend: backend, options: options)
    instance[Instance.Operations.self] = ExecutionEndpoint(backend: backend, options: options)
    instance[Instance.Bots.self] = backend
    instance[Instance.RemoteExecution.self] = true
    let server = try StrataServer(
        registry: InstanceRegistry([instance]), modules: StrataServer.storageModules + [ExecutionModule()],
        addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))], shutdownTimeout: .seconds(5))
    let maintenance = Task { try? await scheduler.run() }
    defer { maintenance.cancel() }
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await server.run()
            return nil
        }
        guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
        let result = await Result(catching: { () async throws -> T in
            try await withGRPCClient(transport: transport) { client in
                try await body(ExecutionServer(
                    scheduler: scheduler, store: store, cache: cache, execution: ExecutionClient(wrapping: client),
                    operations: OperationsClient(wrapping: client), bots: BotsClient(wrapping: client),
                    capabilities: CapabilitiesClient(wrapping: client), server: server))
            }
        })
        // Shut down gracefully even when the body failed: cancelling the server's task with RPCs in
        // flight trips a NIO precondition instead of reporting the body's error.
        server.beginGracefulShutdown()
        for try await _ in group {}
        return try result.get()
    }
}

extension Google_Longrunning_Operation {
    var executeMetadata: OperationMetadata? { try? OperationMetadata(unpackingAny: metadata) }
    var stage: Build_Bazel_Remote_Execution_V2_ExecutionStage.Value { executeMetadata?.stage ?? .unknown }
    var executeResponse: ExecuteResponse? {
        guard case .response(let any)? = result else { return nil }
        return try? ExecuteResponse(unpackingAny: any)
    }
    var hasError: Bool { if case .error? = result { true } else { false } }
}

extension Lease {
    /// The lease as the bot reports it finished with `result`.
    func completed(_ result: ActionResult) throws -> Lease {
        var lease = self
        lease.state = .completed
        lease.result = try Google_Protobuf_Any(message: result)
        lease.status = Google_Rpc_Status()
        return lease
    }
}

/// The status code of an RPC that must fail, with its message and the error.
func rpcFailure(_ operation: () async throws -> Void) async -> RPCError? {
    do {
        try await operation()
        return nil
    } catch let error as RPCError {
        return error
    } catch {
        return RPCError(code: .unknown, message: "\(error)")
    }
}
