import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import StrataConfig
import StrataCore
import StrataStorage

/// `strata scrub CONFIG`: a command of its own rather than `janitor --verify`, because it needs no
/// index and no `cleanup:` section (the embedded default, a bare `!disk-storage`, has neither) and it
/// covers every listable storage of the file, indexed or not; under an index it removes through the
/// index, so the entry goes with the blob.
struct ScrubCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scrub",
        abstract: "Re-hash every blob of each disk, S3 and SQL storage in CONFIG and remove the corrupt ones (with their index entries).",
        discussion: """
            Safe next to a running server: it reads, and removes only blobs whose stored copy does not match \
            their digest (checked twice), so that clients see them missing and upload them again. Stops after \
            the current blob on SIGTERM or SIGINT.
            """)

    @Argument(help: "The configuration file (the server's).")
    var config: String

    @Flag(help: "Remove nothing; report what is corrupt.")
    var dryRun = false

    @Option(help: "Read at most this many bytes per second (e.g. 50M; 0: no limit), to leave the storage to the server.")
    var bytesPerSecond: String = "100M"

    @OptionGroup var logging: LogOptions

    func rate() throws -> Int64 {
        if bytesPerSecond.trimmingCharacters(in: .whitespaces) == "0" { return 0 }
        guard let rate = parseByteSize(bytesPerSecond), rate > 0 else {
            throw ValidationError("--bytes-per-second must be a size such as 50M (or 0 for no limit), not \(bytesPerSecond)")
        }
        return rate
    }

    func validate() throws { _ = try rate() }

    func run() async throws {
        logging.bootstrap()
        let configuration = loadConfigurationOrExit(config)
        guard !configuration.scrubTargets.isEmpty else {
            FileHandle.standardError.write(Data("strata: \(config): no storage to scrub (!disk-storage, !s3-storage or !sql-storage)\n".utf8))
            throw ExitCode(1)
        }
        let pass = ScrubPass(targets: configuration.scrubTargets, rate: try rate(), dryRun: dryRun)
        let group = ServiceGroup(configuration: .init(
            services: configuration.backgroundServices.map { .init(service: $0) }
                + [.init(service: pass, successTerminationBehavior: .gracefullyShutdownGroup,
                         failureTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: Logger(label: "strata.scrub")))
        try await group.run()
        if pass.failed.withLock({ $0 }) { throw ExitCode(1) }
    }
}

/// Scrubs each target once, next to the connection pools its storage needs.
private struct ScrubPass: Service {
    let targets: [ScrubTarget]
    let rate: Int64
    let dryRun: Bool
    let failed = SendableFlag()

    func run() async throws {
        for target in targets {
            if Task.isShuttingDownGracefully { return }
            let label = "scrub of \(target.name)\(target.indexed ? " (removing through its index)" : "")"
            let scrubber = Scrubber(storage: target.storage, remover: target.remover, bytesPerSecond: rate)
            do {
                let report = try await scrubber.runPass(dryRun: dryRun) { Task.isShuttingDownGracefully }
                for digest in report.corruptBlobs { print("corrupt: \(digest)") }
                print("\(label): \(report.summary)")
                fflush(nil)
            } catch {
                FileHandle.standardError.write(Data("strata: \(label) failed: \(error)\n".utf8))
                failed.withLock { $0 = true }
            }
        }
    }
}
