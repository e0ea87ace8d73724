import ArgumentParser
import Logging
import StrataLogging

/// `--log-level` and `--log-format`, shared by every command that logs.
struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(help: "Log lines as text (level, label, message, key=value fields) or json (one JSON object per line).")
    var logFormat: LogFormat = .text

    /// Sends every log line to standard error as the options say; once, first thing in `run`.
    func bootstrap() {
        bootstrapLogging(level: logLevel, format: logFormat)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
extension LogFormat: ExpressibleByArgument {}
