import CoreMetrics
import Foundation
import StrataCore

/// Records what one configured storage does: each operation's count, duration and errors, labelled with
/// the storage's config tag (`backend`) and its place in the configuration (`name`). The config builder
/// wraps every storage node with one when monitoring is on, so a composed storage shows each layer.
///
/// NOT_FOUND is an answer, not an error: a read of a missing blob counts as an operation only. A read's
/// duration is the time to open the blob (its first byte), not to stream it.
public struct MetricsBlobStore: BlobStore {
    public let base: any BlobStore
    private let metrics: BackendMetrics

    /// The operations' label values, in the order `BackendMetrics` finds them by.
    private enum Operation: Int, CaseIterable {
        case findMissing, read, write, delete, readBatch, writeBatch

        var label: String {
            switch self {
            case .findMissing: "find_missing"
            case .read: "read"
            case .write: "write"
            case .delete: "delete"
            case .readBatch: "read_batch"
            case .writeBatch: "write_batch"
            }
        }
    }

    public init(_ base: any BlobStore, backend: String, name: String, factory: any MetricsFactory) {
        self.base = base
        self.metrics = BackendMetrics(backend: backend, name: name, factory: factory, operations: Operation.allCases.map(\.label))
    }

    public var maximumBlobSize: Int64? { base.maximumBlobSize }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        try await metrics.measure(Operation.findMissing.rawValue) { try await base.findMissing(digests) }
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await metrics.measure(Operation.read.rawValue) { try await base.read(digest, offset: offset, limit: limit) }
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try await metrics.measure(Operation.write.rawValue) { try await base.write(digest, body: body) }
    }

    public func delete(_ digests: [Digest]) async throws {
        try await metrics.measure(Operation.delete.rawValue) { try await base.delete(digests) }
    }

    /// Passed on uncounted: a nil answer is followed by a `read`, which is counted, and one read must
    /// not count twice.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        try await base.readZstd(digest)
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        await metrics.measureBatch(Operation.readBatch.rawValue) { await base.readBatch(digests) }
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        await metrics.measureBatch(Operation.writeBatch.rawValue) { await base.writeBatch(blobs) }
    }
}

/// The operation metrics of one backend (a storage or an action cache): `strata_backend_operations_total`,
/// `strata_backend_errors_total` and `strata_backend_duration_seconds`, made once per operation and
/// found by its position in `operations` (a call costs no string hashing).
/// Counting changes nothing of what the store holds: what looks through transparent decorators (the
/// janitor listing an index's storage, the configuration's checks) sees the store beneath.
extension MetricsBlobStore: TransparentBlobStore {
    public var wrapped: any BlobStore { base }
}

public struct BackendMetrics: Sendable {
    struct Operation: Sendable {
        let count: Counter
        let errors: Counter
        let duration: CoreMetrics.Timer
    }
    private let operations: [Operation]

    public init(backend: String, name: String, factory: any MetricsFactory, operations names: [String]) {
        operations = names.map { operation in
            let labels = [("backend", backend), ("name", name), ("operation", operation)]
            return Operation(
                count: Counter(label: "strata_backend_operations_total", dimensions: labels, factory: factory),
                errors: Counter(label: "strata_backend_errors_total", dimensions: labels, factory: factory),
                duration: CoreMetrics.Timer(label: "strata_backend_duration_seconds", dimensions: labels, factory: factory))
        }
    }

    /// Runs `body` as the operation at `index` of the names given to `init`.
    public func measure<Value>(_ index: Int, _ body: () async throws -> Value) async throws -> Value {
        let operation = operations[index]
        let start = ContinuousClock.now
        defer {
            operation.count.increment()
            operation.duration.recordNanoseconds((ContinuousClock.now - start).nanosecondsForMetrics)
        }
        do {
            return try await body()
        } catch {
            if StrataError.from(error).code != .notFound { operation.errors.increment() }
            throw error
        }
    }

    /// A batch's errors are its entries that failed other than NOT_FOUND.
    public func measureBatch<Value>(_ index: Int, _ body: () async -> [Result<Value, StrataError>]) async -> [Result<Value, StrataError>] {
        let operation = operations[index]
        let start = ContinuousClock.now
        let results = await body()
        operation.count.increment()
        operation.duration.recordNanoseconds((ContinuousClock.now - start).nanosecondsForMetrics)
        let failed = results.reduce(0) { count, result in
            if case .failure(let error) = result, error.code != .notFound { return count + 1 }
            return count
        }
        if failed > 0 { operation.errors.increment(by: failed) }
        return results
    }
}

extension Duration {
    /// Whole nanoseconds, what swift-metrics' timers take.
    public var nanosecondsForMetrics: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
