import CoreMetrics
import Logging
import Prometheus
import StrataStorage
import Synchronization

/// What `monitoring:` built: the `MetricsFactory` everything records through (one output, or several
/// multiplexed), Prometheus's registry when an output serves `/metrics`, and the StatsD writers that
/// `strata serve` runs. Building it opens nothing: the writers open their endpoints when run, the HTTP
/// listener binds when served.
///
/// Gauges (storage sizes, uploads in flight) are read, not pushed: `sample()` reads them, before each
/// scrape and each StatsD flush.
public final class Monitoring: Sendable {
    public let factory: any MetricsFactory
    public let prometheus: PrometheusCollectorRegistry?
    public let statsDWriters: [StatsDWriter]
    private let samplers = Mutex<[@Sendable () -> Void]>([])

    /// Latency buckets from 100 µs (a FindMissingBlobs served from memory) to a minute (a large upload).
    public static let durationBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
        .seconds(30), .seconds(60),
    ]

    /// - Parameters:
    ///   - prometheus: whether an output serves `/metrics`.
    ///   - statsD: each StatsD output's endpoint and line format.
    public init(prometheus: Bool, statsD: [(endpoint: StatsDEndpoint, format: StatsDFormat)], logger: Logger) {
        var factories: [any MetricsFactory] = []
        if prometheus {
            let registry = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: registry)
            factory.defaultDurationHistogramBuckets = Self.durationBuckets
            factories.append(factory)
            self.prometheus = registry
        } else {
            self.prometheus = nil
        }
        var writers: [StatsDWriter] = []
        for output in statsD {
            let factory = StatsDMetricsFactory(format: output.format)
            factories.append(factory)
            writers.append(StatsDWriter(factory: factory, endpoint: output.endpoint, logger: logger))
        }
        self.statsDWriters = writers
        self.factory = factories.count == 1 ? factories[0] : MultiplexMetricsHandler(factories: factories)
        for writer in writers { writer.beforeFlush = { [weak self] in self?.sample() } }
    }

    /// Adds a gauge reading, run by `sample()`.
    public func addSampler(_ sampler: @escaping @Sendable () -> Void) {
        samplers.withLock { $0.append(sampler) }
    }

    /// Reads every gauge now.
    public func sample() {
        for sampler in samplers.withLock({ $0 }) { sampler() }
    }

    /// `/metrics`: the gauges read now, then every metric in Prometheus's text format.
    public func prometheusText() -> String? {
        guard let prometheus else { return nil }
        sample()
        return prometheus.emitToString()
    }

    /// Gauges of a storage that knows how full it is, labelled like its backend metrics:
    /// `strata_storage_bytes`, `strata_storage_blobs`, `strata_storage_limit_bytes` and the counter
    /// `strata_storage_evictions_total`.
    public func addStorageGauges(backend: String, name: String, storage: any StorageUsageReporting) {
        let labels = [("backend", backend), ("name", name)]
        let bytes = Meter(label: "strata_storage_bytes", dimensions: labels, factory: factory)
        let blobs = Meter(label: "strata_storage_blobs", dimensions: labels, factory: factory)
        let limit = Meter(label: "strata_storage_limit_bytes", dimensions: labels, factory: factory)
        let evictions = Counter(label: "strata_storage_evictions_total", dimensions: labels, factory: factory)
        let reported = Atomic<Int64>(0)
        addSampler {
            let usage = storage.storageUsage
            if let value = usage.bytes { bytes.set(value) }
            if let value = usage.blobs { blobs.set(value) }
            if let value = usage.limitBytes { limit.set(value) }
            if let total = usage.evictions {
                // The counter moves by what was evicted since the last reading.
                let previous = reported.exchange(total, ordering: .relaxed)
                if total > previous { evictions.increment(by: total - previous) }
            }
        }
    }
}
