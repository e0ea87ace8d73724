import Logging
import Synchronization

/// Log entries a test's loggers wrote, kept in memory.
public final class CapturedLog: Sendable {
    public struct Entry: Sendable {
        public let level: Logger.Level
        public let message: String
        public let metadata: [String: String]
    }

    private let entries = Mutex<[Entry]>([])

    public init() {}

    public var all: [Entry] { entries.withLock { $0 } }

    public func logger(label: String = "strata.access", level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: label) { _ in Handler(log: self) }
        logger.logLevel = level
        return logger
    }

    /// Waits (boundedly) for an entry matching `predicate`: an RPC's line is written once its response
    /// is over, which may be just after the client has it.
    public func entry(_ predicate: (Entry) -> Bool) async -> Entry? {
        for _ in 0..<200 {
            if let found = all.first(where: predicate) { return found }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let fields = (event.metadata ?? [:]).mapValues { "\($0)" }
            log.entries.withLock { $0.append(Entry(level: event.level, message: "\(event.message)", metadata: fields)) }
        }
    }
}
