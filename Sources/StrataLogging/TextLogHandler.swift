import Foundation
import Logging
import Synchronization

/// A swift-log handler writing each entry as one text line, in swift-log's `StreamLogHandler` layout:
/// `2026-12-05T15:40:00+0000 info strata.access : key=value key=value [Module] message`.
///
/// Written for the access log, which writes a line per RPC: swift-log's stream handler formats the
/// time with `strftime` on every line, merges and sorts the metadata through several intermediate
/// collections and writes through stdio's locked, flushed stream; it cost about 30 µs per RPC, a
/// third of a small call's whole server CPU. Here the timestamp is formatted once a second, the line
/// is built in one string and written with one `write(2)` (so lines of concurrent tasks never mix).
public struct TextLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let write: @Sendable (String) -> Void

    /// Writes to standard error.
    public static func standardError(label: String) -> TextLogHandler {
        TextLogHandler(label: label, write: writeToStandardError)
    }

    /// `write` receives each line, with its newline.
    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil, write: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = Self.timestamp(time(nil))
        line.reserveCapacity(256)
        line += " "
        line += event.level.rawValue
        line += " "
        line += label
        line += " :"
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata {
            if merged.isEmpty { merged = extra } else { merged.merge(extra) { _, new in new } }
        }
        for key in merged.keys.sorted() {
            line += " "
            line += key
            line += "="
            line += merged[key]!.description
        }
        line += " ["
        line += event.source
        line += "] "
        line += event.message.description
        line += "\n"
        write(line)
    }

    /// The second `timestamp` was last formatted for, and its text: one `strftime` a second.
    private static let lastTimestamp = Mutex<(second: time_t, text: String)>((-1, ""))

    /// `seconds` as local time, `2026-12-05T15:40:00+0000` (swift-log's stream handler's format).
    static func timestamp(_ seconds: time_t) -> String {
        if let cached = lastTimestamp.withLock({ $0.second == seconds ? $0.text : nil }) { return cached }
        var seconds = seconds
        var parts = tm()
        localtime_r(&seconds, &parts)
        var buffer = [Int8](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        let text = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        lastTimestamp.withLock { $0 = (seconds, text) }
        return text
    }
}

/// Writes `line` to standard error with as few `write(2)` calls as it takes (one, but for a full pipe).
@Sendable func writeToStandardError(_ line: String) {
    var line = line
    line.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let written = Foundation.write(2, buffer.baseAddress! + offset, buffer.count - offset)
            if written <= 0 { break }
            offset += written
        }
    }
}
