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
