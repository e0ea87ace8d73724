import CoreMetrics
import StrataCore
import StrataStorage

/// Records what one configured action cache does: each operation's count, duration and errors,
/// labelled with its config tag and place (see `MetricsBlobStore`). A miss (nil) is an answer, not an
/// error.
public struct MetricsActionCache: ActionCache {
    public let base: any ActionCache
    private let metrics: BackendMetrics

    public init(_ base: any ActionCache, backend: String, name: String, factory: any MetricsFactory) {
        self.base = base
        // Found by position: 0 get, 1 update, 2 remove.
        self.metrics = BackendMetrics(backend: backend, name: name, factory: factory, operations: ["get", "update", "remove"])
    }

    public var allowsUpdates: Bool { base.allowsUpdates }

    public func get(_ action: Digest) async throws -> ActionResult? {
        try await metrics.measure(0) { try await base.get(action) }
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        try await metrics.measure(1) { try await base.update(action, result) }
    }

    public func remove(_ action: Digest) async throws {
        try await metrics.measure(2) { try await base.remove(action) }
    }
}
