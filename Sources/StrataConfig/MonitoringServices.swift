import CoreMetrics
import Logging
import ServiceLifecycle
import StrataHTTP
import StrataMetrics
import StrataServer

extension Configuration {
    /// What `monitoring:` runs beside `server`: its StatsD writers and, for `endpoint-type: prometheus`,
    /// an HTTP listener serving `/metrics`, `/status`, `/healthz` and `/readyz`. Empty without monitoring.
    ///
    /// `readiness` answers `/readyz`: each backend's name, and nil when it answers or what failed.
    /// Call once per server: it adds the server's gauges (uploads in flight).
    public func monitoringServices(
        server: StrataServer, version: String, started: ContinuousClock.Instant = .now,
        readiness: @escaping @Sendable () async -> [String: String?] = { [:] }, logger: Logger
    ) -> (listeners: [HTTPListener], services: [any Service]) {
        guard let setup = monitoring else { return ([], []) }
        let monitoring = setup.monitoring
        let uploads = Meter(label: "strata_uploads_in_flight", dimensions: [], factory: monitoring.factory)
        let registry = server.uploads
        monitoring.addSampler { uploads.set(registry.count) }
        let configuration = self
        let routes = MonitoringRoutes.routes(
            metrics: { monitoring.prometheusText() ?? "" },
            status: {
                ServerStatus.current(of: configuration, version: version, started: started, rpcMetrics: setup.rpcMetrics).json()
            },
            readiness: readiness)
        let listeners = setup.prometheusAddresses.compactMap { address -> HTTPListener? in
            guard case .tcp(let host, let port) = address.kind else { return nil }
            return HTTPListener(host: host, port: port, routes: routes, purpose: "monitoring", logger: logger)
        }
        return (listeners, listeners + monitoring.statsDWriters)
    }
}

extension Configuration {
    /// The StatsD writers a maintenance command (`strata cleanup`, `strata janitor`) runs beside its
    /// loop: the UDP outputs only. The others belong to the server the same file configures (its
    /// HTTP port, its socket path, its file, its stdout).
    public func maintenanceMonitoringServices() -> [any Service] {
        monitoring?.monitoring.statsDWriters.filter { if case .udp = $0.endpoint { true } else { false } } ?? []
    }

    /// `strata_cleanup_deleted_blobs_total` and `strata_cleanup_deleted_bytes_total` (or the
    /// janitor's `strata_janitor_…`) of each instance: what a maintenance pass deleted.
    public func deletionCounters(job: String, instances: [String]) -> [String: (blobs: Counter, bytes: Counter)] {
        guard let factory = monitoring?.monitoring.factory else { return [:] }
        var counters: [String: (blobs: Counter, bytes: Counter)] = [:]
        for instance in Set(instances) {
            counters[instance] = (
                Counter(label: "strata_\(job)_deleted_blobs_total", dimensions: [("instance", instance)], factory: factory),
                Counter(label: "strata_\(job)_deleted_bytes_total", dimensions: [("instance", instance)], factory: factory))
        }
        return counters
    }
}
