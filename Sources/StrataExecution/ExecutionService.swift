import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import StrataAPI
import StrataCore
import StrataProto
import StrataScheduler
import StrataServer
import StrataStorage
import SwiftProtobuf

public typealias Operation = Google_Longrunning_Operation

/// REAPI's Execution service: Execute checks the action, answers an action cache hit at once, and
/// otherwise queues it on the instance's scheduler; Execute and WaitExecution then stream the
/// operation's stages until it completes.
public struct ExecutionService: Build_Bazel_Remote_Execution_V2_Execution.SimpleServiceProtocol {
    let registry: InstanceRegistry
    let logger: Logger

    /// The largest Action or Command read from the CAS: they are decoded in memory.
    static let maxMessageSize: Int64 = 16 << 20

    public init(registry: InstanceRegistry, logger: Logger = Logger(label: "strata.execution")) {
        self.registry = registry
        self.logger = logger
    }

    public func execute(
        request: Build_Bazel_Remote_Execution_V2_ExecuteRequest, response: RPCWriter<Operation>, context: ServerContext
    ) async throws {
        let endpoint = try registry.service(Instance.Execution.self, of: request.instanceName)
        let backend = endpoint.backend
        guard request.hasActionDigest else { throw StrataError.invalidArgument("Execute needs an action_digest") }
        let function = try DigestFunction.of(request: request.digestFunction, firstHash: request.actionDigest.hash)
        let actionDigest = try Digest(request.actionDigest, function: function)
        let (action, command) = try await Self.readAction(actionDigest, from: backend.storage)

        let settings = backend.scheduler.settings
        var timeout: Duration?
        if action.hasTimeout {
            let requested = Duration.seconds(action.timeout.seconds) + .nanoseconds(Int64(action.timeout.nanos))
            guard requested >= .zero else { throw StrataError.invalidArgument("the action's timeout \(requested) is negative") }
            guard requested <= settings.maxExecutionTimeout else {
                throw StrataError.invalidArgument(
                    "the action's timeout \(requested) exceeds this server's max-execution-timeout \(settings.maxExecutionTimeout)")
            }
            if requested > .zero { timeout = requested }
        }
        let platform = PlatformProperty.properties(
            of: action.hasPlatform && !action.platform.properties.isEmpty ? action.platform : command.platform)
        try settings.propertySet.validate(platform)

        let executionRequest = ExecutionRequest(
            instanceName: request.instanceName, actionDigest: actionDigest, action: action, platform: platform,
            priority: request.executionPolicy.priority, doNotCache: action.doNotCache, timeout: timeout,
            requestMetadata: RequestContext.current?.metadata ?? ClientRequestMetadata())

        if !request.skipCacheLookup && !action.doNotCache, let cache = backend.actionCache {
            do {
                if let result = try await cache.get(actionDigest) {
                    let operation = try await backend.scheduler.recordCachedResult(executionRequest, result: result)
                    try await response.write(operation.longrunningOperation())
                    return
                }
            } catch let error as StrataError where error.code == .notFound {
                // A miss some caches report as NOT_FOUND: run the action.
            } catch {
                // The cache is an optimisation: an unreachable one makes the action run, not fail.
                logger.warning("action cache lookup for \(actionDigest) failed, executing instead: \(error)")
            }
        }
        let operation = try await backend.scheduler.queue(executionRequest)
        try await Self.stream(operation.name, backend.scheduler, keepalive: endpoint.options.operationStreamKeepalive, to: response)
    }

    public func waitExecution(
        request: Build_Bazel_Remote_Execution_V2_WaitExecutionRequest, response: RPCWriter<Operation>, context: ServerContext
    ) async throws {
        guard let instanceName = ScopedName.instance(of: request.name, collection: "operations") else {
            throw StrataError.notFound("no operation named \"\(StrataError.echo(request.name))\": operation names are {instance}/operations/{id}")
        }
        let endpoint = try registry.service(Instance.Execution.self, of: instanceName)
        try await Self.stream(request.name, endpoint.backend.scheduler, keepalive: endpoint.options.operationStreamKeepalive, to: response)
    }

    /// What the stream's one loop reacts to.
    private enum StreamEvent: Sendable {
        case update(OperationSnapshot)
        case failed(any Error)
        case finished
        case keepaliveDue
        case shuttingDown
        /// gRPC cancelled the RPC (through its cancellation handle, not the handler's task): the
        /// client went away, its deadline passed, or the server started shutting down.
        case rpcCancelled
    }

    /// Sends the operation's current state, each change, and the last state again whenever
    /// `keepalive` passes without a message; ends after the completed state. On a graceful shutdown
    /// the stream ends with UNAVAILABLE naming the operation: the job stays with the scheduler and the
    /// client resumes with WaitExecution. (Ending it with OK would be a stream that finished without a
    /// result, which Bazel reports as "execution terminated with no result" and does not retry; it
    /// retries UNAVAILABLE, with WaitExecution once it has an operation name.) A client that goes away
    /// ends it too, which ends its watch.
    static func stream(_ name: String, _ scheduler: any Scheduler, keepalive: Duration, to response: RPCWriter<Operation>) async throws {
        let updates = try await scheduler.watch(name)
        let (events, continuation) = AsyncStream.makeStream(of: StreamEvent.self, bufferingPolicy: .unbounded)
        try await withRPCCancellationHandler {
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    do {
                        for try await snapshot in updates { continuation.yield(.update(snapshot)) }
                        continuation.yield(.finished)
                    } catch {
                        continuation.yield(.failed(error))
                    }
                }
                group.addTask {
                    while (try? await Task.sleep(for: keepalive)) != nil { continuation.yield(.keepaliveDue) }
                }
                defer { group.cancelAll() }
                var last: OperationSnapshot?
                var sentSinceKeepalive = false
                loop: for await event in events {
                    switch event {
                    case .update(let snapshot):
                        last = snapshot
                        sentSinceKeepalive = true
                        try await response.write(snapshot.longrunningOperation())
                        if snapshot.isDone { break loop }
                    case .keepaliveDue:
                        if !sentSinceKeepalive, let last { try await response.write(last.longrunningOperation()) }
                        sentSinceKeepalive = false
                    case .failed(let error):
                        throw error
                    case .shuttingDown:
                        throw StrataError.unavailable(
                            "the server is shutting down; the operation \(StrataError.echo(name)) goes on: follow it with WaitExecution")
                    case .rpcCancelled:
                        // gRPC cancels every RPC when the server starts a graceful shutdown, often
                        // before the shutdown handler above runs: the client must hear UNAVAILABLE.
                        if RequestContext.current?.serverShutdown.hasBegun == true || Task.isShuttingDownGracefully {
                            throw StrataError.unavailable(
                                "the server is shutting down; the operation \(StrataError.echo(name)) goes on: follow it with WaitExecution")
                        }
                        // Otherwise the client left, or its deadline passed: nobody hears the answer,
                        // which the logs and metrics record as what it was.
                        if let remaining = RequestDeadline.remaining, remaining <= .zero {
                            throw StrataError(.deadlineExceeded, "the client's deadline passed while it followed the operation \(StrataError.echo(name))")
                        }
                        throw StrataError(.cancelled, "the client stopped following the operation \(StrataError.echo(name))")
                    case .finished:
                        break loop
                    }
                }
            }
        } onGracefulShutdown: {
            continuation.yield(.shuttingDown)
        }
        } onCancelRPC: {
            continuation.yield(.rpcCancelled)
        }
    }

    /// The Action and its Command, with its input root present: FAILED_PRECONDITION with a
    /// PreconditionFailure naming each missing blob otherwise, as the spec asks. The Command is read
    /// while the input root is looked for (a missing Command shows as a failed read): one round trip
    /// to the storage after the Action's, not two, which counts when the storage is remote.
    static func readAction(
        _ digest: Digest, from storage: any BlobStore
    ) async throws -> (action: Build_Bazel_Remote_Execution_V2_Action, command: Build_Bazel_Remote_Execution_V2_Command) {
        let action: Build_Bazel_Remote_Execution_V2_Action = try await readMessage(digest, what: "the Action", from: storage)
        guard action.hasCommandDigest else { throw StrataError.invalidArgument("the Action \(digest) has no command_digest") }
        guard action.hasInputRootDigest else { throw StrataError.invalidArgument("the Action \(digest) has no input_root_digest") }
        let commandDigest: Digest
        let inputRoot: Digest
        do {
            commandDigest = try Digest(action.commandDigest, function: digest.function)
            inputRoot = try Digest(action.inputRootDigest, function: digest.function)
        } catch {
            throw StrataError.invalidArgument("the Action \(digest): \(error.message)")
        }
        async let inputRootMissing = storage.findMissing([inputRoot])
        let command: Build_Bazel_Remote_Execution_V2_Command? = try await readMessageIfPresent(
            commandDigest, what: "the Command", from: storage)
        var missing: [(Digest, String)] = command == nil ? [(commandDigest, "its Command")] : []
        for root in try await inputRootMissing where root != commandDigest {
            missing.append((root, "its input root Directory"))
        }
        if let command, missing.isEmpty { return (action, command) }
        throw missingBlobs(missing.map(\.0), what: missing.map(\.1))
    }

    /// The message stored under `digest`; FAILED_PRECONDITION naming it when the CAS does not hold it.
    static func readMessage<Message: SwiftProtobuf.Message>(
        _ digest: Digest, what: String, from storage: any BlobStore
    ) async throws -> Message {
        guard let message: Message = try await readMessageIfPresent(digest, what: what, from: storage) else {
            throw missingBlobs([digest], what: [what])
        }
        return message
    }

    /// The message stored under `digest`, nil when the CAS does not hold it; INVALID_ARGUMENT when it is
    /// too large to decode in memory or not a `Message`.
    static func readMessageIfPresent<Message: SwiftProtobuf.Message>(
        _ digest: Digest, what: String, from storage: any BlobStore
    ) async throws -> Message? {
        guard digest.sizeBytes <= maxMessageSize else {
            throw StrataError.invalidArgument("\(what) \(digest) is larger than the \(maxMessageSize) bytes Strata reads")
        }
        let data: Data
        do {
            data = try await storage.readAll(digest)
        } catch let error as StrataError where error.code == .notFound {
            return nil
        }
        do {
            return try Message(serializedBytes: data)
        } catch {
            throw StrataError.invalidArgument("\(what) \(digest) is not a valid \(Message.protoMessageName): \(error)")
        }
    }

    /// FAILED_PRECONDITION carrying a google.rpc.PreconditionFailure with one MISSING violation per
    /// blob, subject "blobs/{hash}/{size}": what a client reads to upload them and retry.
    static func missingBlobs(_ digests: [Digest], what: [String]) -> RPCError {
        let message = "missing from the CAS: " + zip(digests, what).map { "\($1) \($0)" }.joined(separator: ", ")
        let failure = Google_Rpc_PreconditionFailure.with { failure in
            failure.violations = digests.map { digest in
                .with {
                    $0.type = "MISSING"
                    $0.subject = "blobs/\(digest.hash)/\(digest.sizeBytes)"
                    $0.description_p = "\(digest) is not in the CAS"
                }
            }
        }
        var status = Google_Rpc_Status()
        status.code = Int32(StrataError.Code.failedPrecondition.rawValue)
        status.message = message
        if let detail = try? Google_Protobuf_Any(message: failure) { status.details = [detail] }
        var metadata = Metadata()
        if let bytes: [UInt8] = try? status.serializedBytes() { metadata.addBinary(bytes, forKey: "grpc-status-details-bin") }
        return RPCError(code: .failedPrecondition, message: message, metadata: metadata)
    }
}
