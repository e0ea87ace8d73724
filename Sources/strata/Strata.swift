import ArgumentParser
import Foundation
import GRPCCore
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import StrataConfig
import StrataCore
import StrataHTTP
import StrataServer

@main
struct Strata: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "A REAPI v2 remote cache server.",
        version: "strata \(strataVersion)",
        subcommands: [Serve.self, ConfigCommand.self, Migrate.self, Cleanup.self, JanitorCommand.self, ScrubCommand.self, Bench.self,
                      CASCommand.self, ACCommand.self, CapabilitiesCommand.self, WorkerCommand.self])

    static func main() async {
        limitMallocArenas()
        // AsyncParsableCommand.main, except that an error a command lets through is printed as
        // `describeError` words it, not as Swift spells it ("Error: unavailable: ...").
        do {
            var command = try parseAsRoot(nil)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error where error is StrataError || error is RPCError {
            exit(withError: CommandFailure(description: describeError(error)))
        } catch {
            exit(withError: error)
        }
    }

    /// Runs first, before any thread starts: a limit set later leaves the arenas already made.
    static func limitMallocArenas() {
        #if canImport(Glibc)
        // One malloc arena. `!lru-storage` keeps large uploads as their ~1 MiB messages; with glibc's
        // default of up to 8 arenas per core, a thread moved to a fresh arena under contention grows it
        // to a whole LRU's worth while the first arena keeps its freed pieces: a 512M LRU taking 64 MiB
        // uploads jumped from 780 MiB to 1.5 GiB of RSS (with 2 arenas too), and stayed at 780 MiB with
        // one, at the same throughput. Small allocations are served from per-thread caches either way.
        // <malloc.h> is not in Swift's Glibc module: mallopt is looked up, M_ARENA_MAX is its value there.
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
            typealias Mallopt = @convention(c) (CInt, CInt) -> CInt
            let arenaMax: CInt = -8
            _ = unsafeBitCast(symbol, to: Mallopt.self)(arenaMax, 1)
        }
        #endif
    }

}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the server: with CONFIG, as it says; without, on the embedded default (config/default.yml).")

    @Argument(help: "A BuildGrid-style YAML configuration file.")
    var config: String?

    @Option(name: .customLong("address"), help: "Listen here instead of the config's !channel addresses (host:port); repeatable.")
    var addresses: [String] = []

    @OptionGroup var logging: LogOptions

    @Flag(inversion: .prefixedNo, help: "Log one line per RPC (at info level; the health service's at debug).")
    var accessLog = true

    @Option(help: "Seconds a graceful shutdown (SIGTERM, SIGINT) waits for requests in flight before closing their connections.")
    var shutdownTimeout: Double = 30

    func validate() throws {
        guard shutdownTimeout.isFinite, shutdownTimeout >= 0, shutdownTimeout <= 86_400 else {
            throw ValidationError("--shutdown-timeout must be a number of seconds from 0 to 86400")
        }
    }

    func run() async throws {
        raiseFileDescriptorLimit()
        logging.bootstrap()
        let logger = Logger(label: "strata")
        var configuration: Configuration
        do {
            if let config {
                configuration = try Configuration.load(file: config)
            } else {
                configuration = try Configuration.parse(yaml: embeddedDefaultConfiguration, file: "<embedded default>")
            }
            if !addresses.isEmpty {
                // The addresses replace the channels' ones; the first !channel's connection options and TLS stay.
                let policy = configuration.addresses.first.flatMap { configuration.connectionPolicies[$0] }
                let tls = configuration.addresses.first.flatMap { configuration.tls[$0] }
                configuration.addresses = try addresses.map { try ListenAddress(parsing: $0) }
                configuration.connectionPolicies = Dictionary(
                    configuration.addresses.map { ($0, policy ?? .default) }, uniquingKeysWith: { first, _ in first })
                configuration.tls = Dictionary(
                    configuration.addresses.compactMap { address in tls.map { (address, $0) } }, uniquingKeysWith: { first, _ in first })
            }
        } catch {
            printConfigurationProblems(error, prefix: "strata: ")
            throw ExitCode(1)
        }
        for warning in configuration.warnings { logger.warning("\(warning)") }
        logger.info("strata \(strataVersion); configuration: \(config ?? "embedded default")")
        for summary in configuration.storageSummary { logger.info("storage: \(summary)") }
        for summary in configuration.cacheSummary { logger.info("action cache: \(summary)") }
        do {
            // Loading touched nothing; serving needs the storage folders made and a crashed run's leftovers cleared.
            try await configuration.prepare()
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        let server: StrataServer
        do {
            server = try StrataServer(
                registry: configuration.registry, modules: configuration.modules,
                addresses: configuration.addresses, logger: logger,
                policies: configuration.connectionPolicies, shutdownTimeout: .milliseconds(Int64(shutdownTimeout * 1000)),
                health: HealthStatus(readiness: configuration.readiness),
                accessLog: accessLog ? Logger(label: "strata.access") : nil,
                metrics: configuration.monitoring?.rpcMetrics,
                authentication: configuration.authentication,
                tls: configuration.tls, concurrencyLimits: configuration.concurrencyLimits)
        } catch {
            logger.critical("\(describeError(error))")
            throw ExitCode(1)
        }
        // Started with the server, stopped after it: the last requests' metrics are flushed.
        // `/readyz` answers what the health service serves: the backends' last check (every 5 s), so
        // probes of both never ask the backends twice, and not ready while draining.
        let monitoring = configuration.monitoringServices(
            server: server, version: strataVersion,
            readiness: { [health = server.health] in
                var answers: [String: String?] = [:]
                for result in health.lastResults { answers["\(result.name) (\(result.location))"] = .some(result.problem) }
                if health.isDraining {
                    answers["server"] = .some("shutting down")
                } else if !health.isServing, answers.values.allSatisfy({ $0 == nil }) {
                    answers["server"] = .some("the backends have not been checked yet")
                }
                return answers
            },
            logger: logger).services
        // `!http-channel`s: Bazel's HTTP cache protocol on the same instances, stopped with the server.
        let httpCaches: [any Service]
        do {
            httpCaches = try configuration.httpCacheListeners(accessLog: accessLog ? Logger(label: "strata.access") : nil, logger: logger)
        } catch {
            logger.critical("\(describeError(error))")
            throw ExitCode(1)
        }
        let group = ServiceGroup(
            configuration: .init(
                // Graceful shutdown runs in reverse order: the server stops before the connection pools it uses.
                services: (configuration.backgroundServices + monitoring + [server] + httpCaches).map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch {
            logger.critical("\(describeError(error))")
            throw ExitCode(1)
        }
    }
}

/// Lifts the soft limit on open files to the hard one, as servers do: the default soft limit (often
/// 1024) would cap the server's connections far below what the system allows. The connection limit
/// (`ConnectionPolicy.maxConnections`) is derived from the raised value.
func raiseFileDescriptorLimit() {
    #if canImport(Glibc)
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    #endif
}


/// Strata's version, as `strata --version` prints it and the start-up log says. The one place it is
/// written; no commit is embedded (SwiftPM has no side-effect-free way to stamp one at build time).
let strataVersion = "0.1.0"

/// An error as the commands print it: a `StrataError`'s message with its status code in words
/// ("... (invalid argument)"), not its Swift spelling ("invalidArgument: ..."); a `ConfigError` as
/// "FILE:LINE: WHERE: WHAT".
func describeError(_ error: any Error) -> String {
    if let error = error as? RPCError, let code = StrataError.Code(rawValue: error.code.rawValue) {
        // A call to another server (`strata bench`, a remote store) failed: its status, same words.
        return describeError(StrataError(code, error.message + (error.cause.map { ": \($0)" } ?? "")))
    }
    guard let error = error as? StrataError else { return "\(error)" }
    return "\(error.message) (\(error.code.words))"
}

/// Loads `file` as a command's configuration, or prints why it cannot (`strata: FILE:LINE: …`) and
/// exits 1.
func loadConfigurationOrExit(_ file: String) -> Configuration {
    do {
        return try Configuration.load(file: file)
    } catch {
        printConfigurationProblems(error, prefix: "strata: ")
        Foundation.exit(1)
    }
}

/// Prints why a configuration was refused to standard error: each problem on a line of its own
/// ("FILE:LINE: PATH: WHAT", after `prefix`), then how many there are when there are several.
func printConfigurationProblems(_ error: any Error, prefix: String = "") {
    guard let problems = error as? ConfigErrors else {
        FileHandle.standardError.write(Data("\(prefix)\(describeError(error))\n".utf8))
        return
    }
    let lines = problems.errors.map { "\(prefix)\($0)\n" }.joined()
    FileHandle.standardError.write(Data((lines + "\(prefix)\(problems.errors.count) problems in \(problems.errors.first?.file ?? "the configuration")\n").utf8))
}

/// A `StrataError` or `RPCError` that reached the top of a command, worded by `describeError`.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
}

extension StrataError.Code {
    /// The code as a user reads it: `invalidArgument` is "invalid argument".
    var words: String {
        String(describing: self).reduce(into: "") { words, character in
            if character.isUppercase { words += " " + character.lowercased() } else { words.append(character) }
        }
    }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Work with configuration files.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load CONFIG as `strata serve` would, report every problem with its file and line (exit 1) or its warnings, and exit.")

        @Argument(help: "The configuration file.")
        var config: String

        func run() async throws {
            do {
                let configuration = try Configuration.load(file: config)
                for warning in configuration.warnings { print("warning: \(warning)") }
                // `serve` reads the certificate files when it starts; say now whether it could.
                let tlsProblems = configuration.checkTLSFiles()
                for problem in tlsProblems { FileHandle.standardError.write(Data("\(problem)\n".utf8)) }
                guard tlsProblems.isEmpty else { throw ExitCode(1) }
                let names = configuration.instances.map { "\"\($0.name)\"" }.joined(separator: ", ")
                print("\(config): OK: listening on \(configuration.addresses.map(\.description).joined(separator: ", ")); instances \(names)")
                for cleanup in configuration.cleanups {
                    print("cleanup of instance \"\(cleanup.instanceName)\": \(cleanup.indexSummary)")
                }
            } catch let exit as ExitCode {
                throw exit
            } catch {
                printConfigurationProblems(error)
                throw ExitCode(1)
            }
        }
    }
}
