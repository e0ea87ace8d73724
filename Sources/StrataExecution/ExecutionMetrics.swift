import CoreMetrics
import Foundation
import Logging
import ServiceLifecycle
import StrataScheduler
import Synchronization

/// Remote execution's metrics (with `monitoring:`): the gauges `strata_execution_queued_jobs{platform}`,
/// `strata_execution_jobs{stage}` and `strata_execution_bot_sessions`, read from each scheduler's
/// `statistics()` every `interval` while the server runs (`run()`, one of the configuration's background
/// services); the Bots service records `strata_execution_lease_duration_seconds` (assignment to the
/// bot's report). `strata_execution_requeues_total{reason}` counts the jobs taken back from bots:
/// `bot` when the bot gave the lease back (the Bots service counts those), `session-expired` and
/// `session-closed` when the scheduler closed a session still holding jobs (counted from its
/// statistics, by how much they grew since the last reading).
public final class ExecutionMetrics: Service, Sendable {
    private let factory: any MetricsFactory
    private let schedulers: [(name: String, scheduler: any Scheduler)]
    private let interval: Duration
    private let logger: Logger
    private let leaseDuration: CoreMetrics.Timer
    /// Gauges by their labels, made as platforms appear; a platform no longer queued reads 0.
    private let meters = Mutex<[String: Meter]>([:])
    /// Each scheduler's `jobsTakenBack` at the last reading.
    private let takenBackRead = Mutex<[String: [SessionEnding: Int]]>([:])

    /// - Parameter schedulers: each configured scheduler with its node's name (the `scheduler` label).
    public init(factory: any MetricsFactory, schedulers: [(name: String, scheduler: any Scheduler)], interval: Duration = .seconds(5),
                logger: Logger = Logger(label: "strata.execution.metrics")) {
        self.factory = factory
        self.schedulers = schedulers
        self.interval = interval
        self.logger = logger
        self.leaseDuration = CoreMetrics.Timer(label: "strata_execution_lease_duration_seconds", factory: factory)
    }

    public func recordLease(duration: Duration) {
        leaseDuration.recordNanoseconds(max(0, duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000))
    }

    public func countRequeue(reason: String) {
        Counter(label: "strata_execution_requeues_total", dimensions: [("reason", reason)], factory: factory).increment()
    }

    /// Sets the gauges from one scheduler's statistics.
    public func record(_ statistics: SchedulerStatistics, scheduler name: String) {
        meters.withLock { meters in
            func meter(_ label: String, _ dimensions: [(String, String)]) -> Meter {
                let key = ([label] + dimensions.map { "\($0.0)=\($0.1)" }).joined(separator: "\u{1F}")
                if let meter = meters[key] { return meter }
                let meter = Meter(label: label, dimensions: dimensions, factory: factory)
                meters[key] = meter
                return meter
            }
            let prefix = "strata_execution_queued_jobs\u{1F}scheduler=\(name)\u{1F}"
            // Platforms queued before and not now read 0 rather than their last value.
            for (key, meter) in meters where key.hasPrefix(prefix) { meter.set(0) }
            for (platform, count) in statistics.queuedByPlatform {
                meter("strata_execution_queued_jobs", [("scheduler", name), ("platform", platform)]).set(count)
            }
            for stage in JobStage.allCases {
                meter("strata_execution_jobs", [("scheduler", name), ("stage", "\(stage)")]).set(statistics.jobsByStage[stage] ?? 0)
            }
            meter("strata_execution_bot_sessions", [("scheduler", name)]).set(statistics.openBotSessions)
        }
        let grown = takenBackRead.withLock { read in
            defer { read[name] = statistics.jobsTakenBack }
            return statistics.jobsTakenBack.map { ($0.key, $0.value - (read[name]?[$0.key] ?? 0)) }
        }
        for (ending, count) in grown where count > 0 {
            Counter(label: "strata_execution_requeues_total", dimensions: [("reason", ending.rawValue)], factory: factory)
                .increment(by: count)
        }
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            for (name, scheduler) in schedulers {
                do {
                    record(try await scheduler.statistics(), scheduler: name)
                } catch {
                    logger.warning("scheduler \(name): cannot read its statistics: \(error)")
                }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
        }
    }
}
