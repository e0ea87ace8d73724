import Foundation
import Logging

/// How the commands write their log lines: `text` (swift-log's stream layout, `TIME LEVEL label : key=value [Module] message`) or
/// `json` (one JSON object per line, for log collectors).
public enum LogFormat: String, Sendable, CaseIterable {
    case text
    case json
}

/// A swift-log handler writing each entry as one JSON object on one line:
/// `{"time":"2026-12-05T14:27:29.123Z","level":"info","label":"strata.access","message":"...",KEY:VALUE...}`.
/// Metadata values are strings (arrays and dictionaries nest); a metadata key that is one of the four
/// fixed ones is written with a `metadata.` prefix rather than replacing it.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let write: @Sendable (String) -> Void

    /// Writes to standard error, one `write(2)` per line so lines of concurrent tasks do not mix.
    public static func standardError(label: String) -> JSONLogHandler {
        JSONLogHandler(label: label) { line in writeToStandardError(line + "\n") }
    }

    /// `write` receives each line, without its newline.
    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil, write: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    static let fixedKeys: Set<String> = ["time", "level", "label", "message"]

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        var line = "{\"time\":" + Self.quoted(Self.timestamp(Date()))
        line += ",\"level\":" + Self.quoted(event.level.rawValue)
        line += ",\"label\":" + Self.quoted(label)
        line += ",\"message\":" + Self.quoted(event.message.description)
        for key in merged.keys.sorted() {
            let name = Self.fixedKeys.contains(key) ? "metadata." + key : key
            line += "," + Self.quoted(name) + ":" + Self.json(merged[key]!)
        }
        line += "}"
        write(line)
    }

    static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): quoted(text)
        case .stringConvertible(let convertible): quoted(convertible.description)
        case .array(let values): "[" + values.map(json).joined(separator: ",") + "]"
        case .dictionary(let entries):
            "{" + entries.keys.sorted().map { quoted($0) + ":" + json(entries[$0]!) }.joined(separator: ",") + "}"
        }
    }

    /// `text` as a JSON string: quotes, backslashes and control characters escaped.
    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    /// ISO 8601 in UTC with milliseconds, as log collectors parse it.
    static func timestamp(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        let millis = Int((date.timeIntervalSince1970 - Double(seconds)) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T"
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
    }
}

/// Sends every log line of a command to standard error at `level`, as `format` says; once, first
/// thing in a command's `run`.
public func bootstrapLogging(level: Logger.Level, format: LogFormat) {
    LoggingSystem.bootstrap { label in
        switch format {
        case .text:
            var handler = TextLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        case .json:
            var handler = JSONLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
