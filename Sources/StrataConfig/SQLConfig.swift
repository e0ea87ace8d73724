import Foundation
import StrataCore
import StrataSQL
import StrataStorage
import Yams

/// `!sql-connection`, `!sql-storage` and `!sql-index`.
extension Builder {
    /// A `!sql-connection`, built once per YAML node (aliases share the pool); `readOnly` builds the
    /// `sql-ro` variant of the same node, a second pool whose sessions are read-only.
    mutating func sqlConnection(_ node: ConfigNode, readOnly: Bool = false) throws(ConfigError) -> SQLConnection {
        let key = readOnly ? "\(node.identity):read-only" : node.identity
        if let built = objects[key] as? SQLConnection { return built }
        // Both variants parse the same options: when one failed, the other says nothing more.
        return try once(node) { builder throws(ConfigError) in try builder.buildSQLConnection(node, readOnly: readOnly, key: key) }
    }

    private mutating func buildSQLConnection(_ node: ConfigNode, readOnly: Bool, key: String) throws(ConfigError) -> SQLConnection {
        try requireTag(node, "!sql-connection")
        let options = try node.mapping(
            allowed: ["connection-string", "connection-timeout", "lock-timeout", "statement-timeout", "pool-size", "pool-timeout",
                      "max-overflow", "pool-pre-ping", "connect-args", "pool-recycle"])
        guard let stringNode = options["connection-string"] else {
            throw node.error("!sql-connection needs a connection-string, e.g. postgresql://user:password@host:5432/database")
        }
        let text = try stringNode.string()
        var settings: SQLConnection.Settings
        do throws(StrataError) {
            settings = try SQLConnectionString.parse(text)
        } catch {
            throw stringNode.error(error.message)
        }
        if let timeout = options["connection-timeout"] { settings.connectionTimeout = try seconds(timeout, allowZero: false)! }
        settings.poolTimeout = settings.connectionTimeout
        if let timeout = options["pool-timeout"] { settings.poolTimeout = try seconds(timeout, allowZero: false)! }
        if let timeout = options["lock-timeout"] { settings.lockTimeout = try seconds(timeout, allowZero: true) }
        if let timeout = options["statement-timeout"] { settings.statementTimeout = try seconds(timeout, allowZero: false)! }
        if let size = options["pool-size"] { settings.poolSize = try size.int(minimum: 1) }
        if let overflow = options["max-overflow"] { settings.maxOverflow = try overflow.int(minimum: 0) }
        if let prePing = options["pool-pre-ping"], try !prePing.bool() { settings.keepAlive = nil }
        // SQLAlchemy's default, -1, never recycles: what Strata's pool does.
        if let recycle = options["pool-recycle"], try recycle.secondsNumber() >= 0 {
            ignore(recycle, because: "Strata keeps a busy connection until it fails and closes one idle for 60 s; pool-pre-ping's keep-alive query finds one the database dropped")
        }
        if let argsNode = options["connect-args"] {
            var arguments: [String: String] = [:]
            for (name, value) in try argsNode.mapping(allowed: SQLConnectionString.parameters) {
                if let number = value.node.int { arguments[name] = String(number) } else { arguments[name] = try value.string() }
            }
            do throws(StrataError) {
                try SQLConnectionString.apply(arguments, to: &settings, in: "connect-args")
            } catch {
                throw argsNode.error(error.message)
            }
        }
        settings.readOnly = readOnly
        let connection = SQLConnection(settings: settings)
        objects[key] = connection
        checkReadiness(of: connection, "!sql-connection \(settings.displayName)\(readOnly ? " (sql-ro)" : "")", node)
        backgroundServices.append(connection)
        return connection
    }

    /// Seconds up to a day; nil for 0 when `allowZero` (no limit).
    private func seconds(_ node: ConfigNode, allowZero: Bool) throws(ConfigError) -> Duration? {
        let duration = try node.seconds(allowZero: allowZero, maximum: 86_400)
        return duration == .zero ? nil : duration
    }

    mutating func sqlStorage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: ["sql", "sql-ro", "verify-reads", "compression", "compression-level"])
        guard let sqlNode = options["sql"] else { throw node.error("!sql-storage needs sql: an alias of a !sql-connection") }
        let connection = try sqlConnection(sqlNode)
        var readOnly: SQLConnection?
        if let readOnlyNode = options["sql-ro"] { readOnly = try sqlConnection(readOnlyNode, readOnly: true) }
        let store = SQLBlobStore(connection: connection, readOnlyConnection: readOnly, compressionLevel: try compressionLevel(options))
        return (try verifying(store, name: "SQL storage \(connection.settings.displayName)", options),
                "!sql-storage in \(connection.settings.displayName) (blobs up to \(store.blobSizeLimit) bytes\(store.compressionLevel.map { ", new ones zstd-compressed at level \($0)" } ?? ""))")
    }

    mutating func sqlIndex(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(
            allowed: ["storage", "sql", "sql-ro", "window-size", "inclause-limit", "max-inline-blob-size",
                      "refresh-accesstime-older-than"])
        guard let storageNode = options["storage"] else { throw node.error("!sql-index needs a storage") }
        guard let sqlNode = options["sql"] else { throw node.error("!sql-index needs sql: an alias of a !sql-connection") }
        let backing = try storage(storageNode)
        let connection = try sqlConnection(sqlNode)
        var readOnly: SQLConnection?
        if let readOnlyNode = options["sql-ro"] { readOnly = try sqlConnection(readOnlyNode, readOnly: true) }
        var window = try options["window-size"]?.int(minimum: 1) ?? 1000
        // Strata sends a window's digests as two array parameters, not as an IN list of one parameter
        // per digest, so there is no IN clause to limit; a positive inclause-limit caps the window.
        if let limit = try options["inclause-limit"]?.int(minimum: 0), limit > 0 { window = min(window, limit) }
        var inline: Int64 = 0
        if let inlineNode = options["max-inline-blob-size"] {
            if inlineNode.node.int != 0 { inline = try inlineNode.size() }
            guard inline <= SQLIndex.inlineLimit else {
                throw inlineNode.error("must be at most \(SQLIndex.inlineLimit) bytes: inline blobs are read whole into memory")
            }
        }
        let refresh = try options["refresh-accesstime-older-than"]?.seconds(allowZero: true) ?? .zero
        let index: SQLIndex
        do throws(StrataError) {
            index = try SQLIndex(
                backingStore: backing, connection: connection, readOnlyConnection: readOnly, windowSize: window,
                maxInlineBlobSize: inline, refreshAccessTimeOlderThan: refresh)
        } catch {
            throw node.error(error.message)
        }
        return (index, "!sql-index in \(connection.settings.displayName) over \(type(of: backing)) "
                    + "(window \(window), inline up to \(inline) bytes, refresh after \(refresh.timeInterval) s)")
    }
}
