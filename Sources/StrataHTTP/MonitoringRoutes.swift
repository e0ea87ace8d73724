import Hummingbird

/// The monitoring listener's routes (`endpoint-type: prometheus`).
public enum MonitoringRoutes {
    /// - Parameters:
    ///   - metrics: `/metrics`, Prometheus's text format.
    ///   - status: `/status`, a JSON document.
    ///   - readiness: `/readyz`: each backend's name and nil when it answers, else what failed.
    public static func routes(
        metrics: @escaping @Sendable () -> String,
        status: @escaping @Sendable () async -> String,
        readiness: @escaping @Sendable () async -> [String: String?]
    ) -> [HTTPRoute] {
        [
            .text("/metrics") { (.ok, "text/plain; version=0.0.4; charset=utf-8", metrics()) },
            .text("/status") { (.ok, "application/json", await status()) },
            // The process answers, so it serves: the gRPC listeners run in the same service group,
            // which ends (and this with it) when one of them fails.
            .text("/healthz") { (.ok, "text/plain; charset=utf-8", "ok\n") },
            .text("/readyz") {
                let failing = await readiness().compactMap { name, problem in problem.map { (name, $0) } }
                    .sorted { $0.0 < $1.0 }
                guard !failing.isEmpty else { return (.ok, "text/plain; charset=utf-8", "ready\n") }
                let lines = failing.map { "\($0.0): \($0.1)" }.joined(separator: "\n")
                return (.serviceUnavailable, "text/plain; charset=utf-8", "not ready:\n\(lines)\n")
            },
        ]
    }
}
