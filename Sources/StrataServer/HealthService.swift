import GRPCCore
import Logging
import StrataAPI
import StrataCore
import StrataProto
import Synchronization

/// Whether the server serves, as the health service and probes report it: not while a configured
/// backend does not answer (`Readiness`, asked every `period`), and not once a graceful shutdown
/// started (draining).
public final class HealthStatus: Sendable {
    public let readiness: Readiness
    /// How often the backends are asked.
    public let period: Duration
    private let logger: Logger

    private struct State {
        /// The last answer of each backend; nil before the first check.
        var results: [Readiness.Result]?
        var draining = false
        /// Each Watch's stream of changes.
        var watchers: [Int: AsyncStream<Bool>.Continuation] = [:]
        var nextWatcher = 0

        var isServing: Bool { !draining && (results?.allSatisfy(\.isReady) ?? false) }
    }
    private let state = Mutex(State())

    public static let defaultPeriod: Duration = .seconds(5)

    public init(readiness: Readiness = Readiness(), period: Duration = HealthStatus.defaultPeriod,
                logger: Logger = Logger(label: "strata.health")) {
        self.readiness = readiness
        self.period = period
        self.logger = logger
        // With nothing to ask, the server serves from the start.
        if readiness.backends.isEmpty { state.withLock { $0.results = [] } }
    }

    /// Whether the server serves now.
    public var isServing: Bool { state.withLock { $0.isServing } }

    /// Each backend's last answer (empty before the first check).
    public var lastResults: [Readiness.Result] { state.withLock { $0.results ?? [] } }

    /// Asks the backends every `period` until cancelled, logging each that stops or starts answering.
    public func monitor() async {
        guard !readiness.backends.isEmpty else { return }
        repeat {
            await refresh()
        } while (try? await Task.sleep(for: period)) != nil
    }

    /// Asks the backends once and publishes the result.
    public func refresh() async {
        let results = await readiness.check()
        let previous = state.withLock { $0.results } ?? readiness.backends.map {
            Readiness.Result(name: $0.name, location: $0.location, problem: nil)
        }
        for (before, now) in zip(previous, results) where before.isReady != now.isReady {
            if let problem = now.problem {
                logger.warning("backend not ready: \(now.name) (\(now.location)): \(problem)")
            } else {
                logger.notice("backend ready again: \(now.name) (\(now.location))")
            }
        }
        update { $0.results = results }
    }

    /// A graceful shutdown started: every service reports NOT_SERVING from now on, and each Watch
    /// ends after saying so (an open Watch would otherwise hold the shutdown until its deadline).
    public func beginDraining() {
        update { $0.draining = true }
    }

    public var isDraining: Bool { state.withLock { $0.draining } }

    private func update(_ change: (inout State) -> Void) {
        let (serving, watchers) = state.withLock { state in
            change(&state)
            return (state.isServing, Array(state.watchers.values))
        }
        for watcher in watchers { watcher.yield(serving) }
    }

    /// Whether the server serves, now and at each change, until the caller stops iterating.
    func changes() -> AsyncStream<Bool> {
        let (stream, continuation) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLock { state in
            let id = state.nextWatcher
            state.nextWatcher += 1
            state.watchers[id] = continuation
            continuation.yield(state.isServing)
            return id
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
        }
        return stream
    }
}

/// `grpc.health.v1.Health`: the server as a whole (service "") and each of its services, all SERVING
/// or NOT_SERVING together (every service uses the same backends); an unknown service is NOT_FOUND to
/// Check and SERVICE_UNKNOWN to Watch, as the spec says.
public struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
    typealias Status = Grpc_Health_V1_HealthCheckResponse.ServingStatus

    let status: HealthStatus
    /// The fully qualified names of the services served, which Check and Watch know.
    let services: Set<String>

    public init(status: HealthStatus, services: [String]) {
        self.status = status
        self.services = Set(services + ["", Grpc_Health_V1_Health.descriptor.fullyQualifiedService])
    }

    public func check(
        request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext
    ) async throws -> Grpc_Health_V1_HealthCheckResponse {
        guard services.contains(request.service) else {
            throw RPCError(code: .notFound, message: "unknown service \"\(request.service)\": this server serves \(known)")
        }
        return .with { $0.status = status.isServing ? .serving : .notServing }
    }

    public func list(
        request: Grpc_Health_V1_HealthListRequest, context: ServerContext
    ) async throws -> Grpc_Health_V1_HealthListResponse {
        let serving: Status = status.isServing ? .serving : .notServing
        return .with { response in
            for service in services { response.statuses[service] = .with { $0.status = serving } }
        }
    }

    public func watch(
        request: Grpc_Health_V1_HealthCheckRequest, response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
        context: ServerContext
    ) async throws {
        guard services.contains(request.service) else {
            // The spec: SERVICE_UNKNOWN, and the stream stays open in case the service appears (it
            // cannot here, so it stays open until the client or a shutdown ends it).
            try await response.write(.with { $0.status = .serviceUnknown })
            for await _ in status.changes() where status.isDraining { return }
            return
        }
        var last: Bool?
        for await serving in status.changes() {
            if serving != last {
                try await response.write(.with { $0.status = serving ? .serving : .notServing })
                last = serving
            }
            if status.isDraining { return }
        }
    }

    private var known: String {
        services.filter { !$0.isEmpty }.sorted().joined(separator: ", ") + " and \"\" (the whole server)"
    }
}
