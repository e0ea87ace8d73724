import ArgumentParser
import Foundation
import Logging
import StrataCore
import ServiceLifecycle
import StrataConfig
import StrataStorage
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct Cleanup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Keep the CAS under the `cleanup:` watermarks of CONFIG: delete least recently used blobs, never one used within only-if-unused-for.",
        discussion: "Runs a pass per cleanup entry, then sleeps, until SIGTERM or SIGINT (which let the current batch finish).")

    @Argument(help: "The configuration file (the server's; `strata serve` ignores the cleanup section).")
    var config: String

    @Flag(help: "Run one pass and exit.")
    var once = false

    @Flag(help: "Delete nothing; print what a pass would delete.")
    var dryRun = false

    @Option(help: "Seconds between passes (default: the entry's sleep-interval, else 60).")
    var sleepInterval: Double?

    @Option(help: "Only the cleanup entries of this instance.")
    var instanceName: String?

    @OptionGroup var logging: LogOptions

    func validate() throws {
        try validateSeconds(sleepInterval, "--sleep-interval")
    }

    func run() async throws {
        let (configuration, targets) = try loadTargets(config, instanceName: instanceName, logging: logging)
        let deletions = configuration.deletionCounters(job: "cleanup", instances: targets.map(\.instanceName))
        let loop = MaintenanceLoop(name: "cleanup", once: once || dryRun) { target, shouldStop in
            let output = ProgressOutput()
            let cleaner = IndexCleaner(index: target.index, policy: target.policy, progress: output.progress)
            let report = try await cleaner.runPass(dryRun: dryRun, shouldStop: shouldStop)
            deletions[target.instanceName]?.blobs.increment(by: report.deletedBlobs)
            deletions[target.instanceName]?.bytes.increment(by: report.deletedBytes)
            output.finish()
            for entry in report.wouldDelete {
                print("would delete \(entry.digest) (last used \(ISO8601DateFormatter().string(from: entry.accessed)))")
            }
            return report.summary
        } sleep: { target in
            sleepInterval.flatMap { Duration(settingSeconds: $0) } ?? target.sleepInterval ?? .seconds(60)
        }
        try await runMaintenance(loop, targets: targets, configuration: configuration)
    }
}

struct JanitorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "janitor",
        abstract: "Reconcile the storage of each `cleanup:` index in CONFIG with the index: delete blobs the index does not know (after a grace period) and entries whose blob is gone.")

    @Argument(help: "The configuration file.")
    var config: String

    @Option(help: "Seconds a blob may stay unindexed before it counts as an orphan: it may be being written.")
    var gracePeriod: Double = 3600

    @Flag(help: "Run one pass and exit.")
    var once = false

    @Flag(help: "Delete nothing; report what a pass would delete.")
    var dryRun = false

    @Option(help: "Seconds between passes.")
    var sleepInterval: Double = 3600

    @Option(help: "The largest share (0 to 1) of a storage's blobs one pass deletes as orphans; a pass that would delete more deletes nothing and fails, since so many orphans mean the index is not the one recording the storage's writes. Counting first lists the storage and index twice.")
    var maxDeleteShare: Double = Janitor.defaultMaxDeleteShare

    @Flag(help: "Delete the orphans whatever their share of the storage (see --max-delete-share).")
    var force = false

    @OptionGroup var logging: LogOptions

    func validate() throws {
        try validateSeconds(gracePeriod, "--grace-period")
        try validateSeconds(sleepInterval, "--sleep-interval")
        guard (0...1).contains(maxDeleteShare) else {
            throw ValidationError("--max-delete-share must be a share from 0 to 1, not \(maxDeleteShare)")
        }
    }

    func run() async throws {
        let (configuration, all) = try loadTargets(config, instanceName: nil, logging: logging)
        var seen = Set<String>()
        var targets: [CleanupTarget] = []
        for target in all where seen.insert(target.indexIdentity).inserted {
            guard let index = target.index as? any EnumerableIndex else {
                fail("\(target.location): the janitor cannot list the entries of \(target.indexSummary)")
            }
            do {
                _ = try Janitor(index: index, gracePeriod: .zero)
            } catch {
                fail("\(target.location): \(describeError(error))")
            }
            targets.append(target)
        }
        let grace = Duration(settingSeconds: gracePeriod) ?? .zero
        let deletions = configuration.deletionCounters(job: "janitor", instances: targets.map(\.instanceName))
        let loop = MaintenanceLoop(name: "janitor", once: once || dryRun) { target, shouldStop in
            let janitor = try Janitor(
                index: target.index as! any EnumerableIndex, gracePeriod: grace, retryLimit: target.policy.retryLimit,
                maxDeleteShare: force ? nil : maxDeleteShare)
            let report = try await janitor.runPass(dryRun: dryRun, shouldStop: shouldStop)
            if !report.dryRun {
                deletions[target.instanceName]?.blobs.increment(by: report.orphansDeleted)
                deletions[target.instanceName]?.bytes.increment(by: report.orphanBytes)
            }
            return report.summary
        } sleep: { _ in Duration(settingSeconds: sleepInterval) ?? .seconds(3600) }
        try await runMaintenance(loop, targets: targets, configuration: configuration)
    }
}

private func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("strata: \(message)\n".utf8))
    Foundation.exit(1)
}

private func loadTargets(_ file: String, instanceName: String?, logging: LogOptions) throws -> (Configuration, [CleanupTarget]) {
    logging.bootstrap()
    let configuration = loadConfigurationOrExit(file)
    let targets = configuration.cleanups.filter { instanceName == nil || $0.instanceName == instanceName }
    if targets.isEmpty {
        fail("\(file): no cleanup entries\(instanceName.map { " for instance \"\($0)\"" } ?? ""): add a cleanup: section")
    }
    return (configuration, targets)
}

/// Runs the loop next to the connection pools the indexes need, stopping on SIGTERM or SIGINT after
/// the current batch.
private func runMaintenance(_ loop: MaintenanceLoop, targets: [CleanupTarget], configuration: Configuration) async throws {
    let logger = Logger(label: "strata.\(loop.name)")
    let group = ServiceGroup(configuration: .init(
        // The StatsD writers stop after the loop, sending its last pass's deletions.
        services: (configuration.backgroundServices + configuration.maintenanceMonitoringServices()).map { .init(service: $0) }
            + [.init(service: LoopService(loop: loop, targets: targets), successTerminationBehavior: .gracefullyShutdownGroup,
                     failureTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger))
    try await group.run()
    if loop.failed.withLock({ $0 }) { throw ExitCode(1) }
}

struct MaintenanceLoop: Sendable {
    let name: String
    let once: Bool
    let pass: @Sendable (CleanupTarget, @escaping @Sendable () -> Bool) async throws -> String
    let sleep: @Sendable (CleanupTarget) -> Duration
    let failed = SendableFlag()

    init(name: String, once: Bool,
         pass: @escaping @Sendable (CleanupTarget, @escaping @Sendable () -> Bool) async throws -> String,
         sleep: @escaping @Sendable (CleanupTarget) -> Duration) {
        self.name = name
        self.once = once
        self.pass = pass
        self.sleep = sleep
    }
}

final class SendableFlag: Sendable {
    private let value = Mutex(false)
    func withLock<T>(_ body: (inout Bool) -> T) -> T { value.withLock { body(&$0) } }
}

private struct LoopService: Service {
    let loop: MaintenanceLoop
    let targets: [CleanupTarget]

    func run() async throws {
        let shouldStop: @Sendable () -> Bool = { Task.isShuttingDownGracefully }
        while true {
            for target in targets {
                if shouldStop() { return }
                let label = "\(loop.name) of instance \"\(target.instanceName)\" (\(target.indexSummary))"
                do {
                    let summary = try await loop.pass(target, shouldStop)
                    print("\(label): \(summary)")
                    fflush(nil)
                } catch {
                    // A pass that failed (index down past the retry limit) is tried again after the sleep.
                    FileHandle.standardError.write(Data("strata: \(label) failed: \(describeError(error))\n".utf8))
                    if loop.once { loop.failed.withLock { $0 = true } }
                }
            }
            if loop.once || shouldStop() { return }
            let interval = targets.map(loop.sleep).min() ?? .seconds(60)
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}

/// Progress on a terminal: one line rewritten in place. Not a terminal: nothing (the summary says it all).
final class ProgressOutput: Sendable {
    let isTerminal = isatty(STDOUT_FILENO) != 0
    private let wrote = Mutex(false)

    var progress: @Sendable (String) -> Void {
        { [self] line in
            guard isTerminal else { return }
            wrote.withLock { $0 = true }
            print("\r\u{1B}[K\(line)", terminator: "")
            fflush(nil)
        }
    }

    func finish() {
        if wrote.withLock({ $0 }) { print("\r\u{1B}[K", terminator: "") }
    }
}

/// Refuses a number of seconds that is negative, not a number, or over 100 years, naming the option.
private func validateSeconds(_ seconds: Double?, _ option: String) throws {
    guard let seconds, Duration(settingSeconds: seconds) == nil else { return }
    throw ValidationError("\(option) must be a number of seconds from 0 to \(Int(Duration.maximumSettingSeconds)), not \(seconds)")
}
