import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import StrataAPI
import StrataActionCache
import StrataCore
import StrataProto
import StrataScheduler
import StrataServer
import StrataStorage
import SwiftProtobuf

/// A configured scheduler with what its configuration names beside it (BuildGrid's scheduler
/// `storage` and `action-cache`): the CAS actions are read from and the cache results are written to.
public struct ExecutionBackend: Sendable {
    public var scheduler: any Scheduler
    /// Where Execute reads the Action, Command and input root Directory.
    public var storage: any BlobStore
    /// Consulted by Execute (unless `skip_cache_lookup`) and written with bots' results; nil for none.
    public var actionCache: (any ActionCache)?

    public init(scheduler: any Scheduler, storage: any BlobStore, actionCache: (any ActionCache)?) {
        self.scheduler = scheduler
        self.storage = storage
        self.actionCache = actionCache
    }
}

/// The options of an `!execution` service (BuildGrid's names in parentheses).
public struct ExecutionServiceOptions: Sendable, Equatable {
    /// An Execute/WaitExecution stream re-sends the operation at least this often
    /// (`operation-stream-keepalive-timeout`), so clients and proxies see the stream is alive.
    public var operationStreamKeepalive: Duration = .seconds(600)
    /// The largest ListOperations page (`max-list-operations-page-size`); a larger `page_size` is
    /// INVALID_ARGUMENT.
    public var maxListOperationsPageSize: Int = 1000

    public init(operationStreamKeepalive: Duration = .seconds(600), maxListOperationsPageSize: Int = 1000) {
        self.operationStreamKeepalive = operationStreamKeepalive
        self.maxListOperationsPageSize = maxListOperationsPageSize
    }
}

/// What an instance's Execution or Operations service works with.
public struct ExecutionEndpoint: Sendable {
    public var backend: ExecutionBackend
    public var options: ExecutionServiceOptions

    public init(backend: ExecutionBackend, options: ExecutionServiceOptions = ExecutionServiceOptions()) {
        self.backend = backend
        self.options = options
    }
}

extension Instance {
    /// `!execution` with the `execution` endpoint: Execute and WaitExecution.
    public enum Execution: InstanceServiceKey {
        public typealias Value = ExecutionEndpoint
        public static let serviceName = "Execution"
    }

    /// `!execution` with the `operations` endpoint: google.longrunning.Operations.
    public enum Operations: InstanceServiceKey {
        public typealias Value = ExecutionEndpoint
        public static let serviceName = "Operations"
    }

    /// `!bots`, or `!execution` with the `bots` endpoint: the Remote Workers API's Bots service.
    public enum Bots: InstanceServiceKey {
        public typealias Value = ExecutionBackend
        public static let serviceName = "Bots"
    }
}

/// Execution, Operations and Bots: each registered when some instance has it.
public struct ExecutionModule: ServiceModule {
    public let metrics: ExecutionMetrics?

    public init(metrics: ExecutionMetrics? = nil) { self.metrics = metrics }

    public func rpcServices(_ environment: ServerEnvironment) -> [any RegistrableRPCService] {
        let registry = environment.registry
        var services: [any RegistrableRPCService] = []
        if registry.anyInstanceHas(Instance.Execution.self) {
            services.append(ExecutionService(registry: registry, logger: environment.logger))
        }
        if registry.anyInstanceHas(Instance.Operations.self) {
            services.append(OperationsService(registry: registry))
        }
        if registry.anyInstanceHas(Instance.Bots.self) {
            services.append(BotsService(registry: registry, metrics: metrics, logger: environment.logger))
        }
        return services
    }
}

/// Resource names of the scheduler's objects, which carry their instance: "{instance}/operations/{id}"
/// or "operations/{id}" for the instance "", and the same with "bots" for bot sessions.
enum ScopedName {
    /// The instance `name` belongs to, or nil when it is not a name of `collection`'s objects.
    static func instance(of name: String, collection: String) -> String? {
        if name.hasPrefix("\(collection)/") { return name.count > collection.count + 1 ? "" : nil }
        guard let range = name.range(of: "/\(collection)/", options: .backwards), range.upperBound < name.endIndex else { return nil }
        return String(name[..<range.lowerBound])
    }
}

extension OperationSnapshot {
    /// The google.longrunning.Operation clients see: `metadata` is an ExecuteOperationMetadata, and a
    /// completed one carries its ExecuteResponse as `response` (never `error`, as the spec requires).
    ///
    /// While a job waits because no connected bot can take it, the reason is in
    /// `metadata.partial_execution_metadata.auxiliary_metadata` as a `google.protobuf.StringValue`.
    func longrunningOperation() -> Google_Longrunning_Operation {
        var metadata = Build_Bazel_Remote_Execution_V2_ExecuteOperationMetadata()
        metadata.stage = Build_Bazel_Remote_Execution_V2_ExecutionStage.Value(rawValue: stage.rawValue) ?? .unknown
        metadata.actionDigest = actionDigest.proto
        metadata.digestFunction = actionDigest.function.proto
        if waitingReason != nil || botID != nil {
            metadata.partialExecutionMetadata = .with { partial in
                partial.worker = botID ?? ""
                partial.queuedTimestamp = Google_Protobuf_Timestamp(date: queuedAt)
                if let waitingReason, let packed = try? Google_Protobuf_Any(message: Google_Protobuf_StringValue(waitingReason)) {
                    partial.auxiliaryMetadata = [packed]
                }
            }
        }
        var operation = Google_Longrunning_Operation()
        operation.name = name
        operation.done = isDone
        if let packed = try? Google_Protobuf_Any(message: metadata) { operation.metadata = packed }
        if isDone {
            var response = response ?? Build_Bazel_Remote_Execution_V2_ExecuteResponse()
            if self.response == nil {
                // The contract sets a response on every completed operation; never leave `done` without one.
                response.status = StrataError(cancelled ? .cancelled : .internal, "the operation completed without a response").rpcStatus
            }
            if let packed = try? Google_Protobuf_Any(message: response) { operation.response = packed }
        }
        return operation
    }
}

/// A scheduler's periodic work (`Scheduler.run()`: expiring bot sessions, timing out jobs, ...) as one
/// of `strata serve`'s background services, ended by a graceful shutdown.
public struct SchedulerService: Service {
    public let scheduler: any Scheduler

    public init(_ scheduler: any Scheduler) { self.scheduler = scheduler }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await scheduler.run() }
        } catch where Task.isShuttingDownGracefully || Task.isCancelled {
            // Stopped by the shutdown, as meant: not a failure that would fail `strata serve`'s exit.
        }
    }
}
