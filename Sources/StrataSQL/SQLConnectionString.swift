import Foundation
import StrataCore

/// BuildGrid's `connection-string`: a SQLAlchemy URL for PostgreSQL,
/// `postgresql[+driver]://[user[:password]@]host[:port]/database[?parameter=value&...]`.
///
/// Parameters are libpq's, as SQLAlchemy passes them to psycopg2: `sslmode`, `connect_timeout`,
/// `application_name`, `options` (`-c name=value` run-time settings, e.g. `search_path`), and `host`
/// (a socket folder for Unix-domain connections). Anything else is refused rather than ignored.
public enum SQLConnectionString {
    static let schemes: Set<String> = [
        "postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+psycopg2cffi",
        "postgresql+pg8000", "postgresql+asyncpg",
    ]
    public static let parameters: Set<String> = ["sslmode", "connect_timeout", "application_name", "options", "host"]

    public static func parse(_ text: String) throws(StrataError) -> SQLConnection.Settings {
        let shown = redacted(text)
        guard let schemeEnd = text.range(of: "://") else {
            throw .invalidArgument("connection string \"\(shown)\" is not a URL: expected postgresql://user:password@host:port/database")
        }
        let scheme = text[..<schemeEnd.lowerBound].lowercased()
        guard schemes.contains(scheme) else {
            throw .invalidArgument(
                "connection string \"\(shown)\": Strata's SQL backends use PostgreSQL only; \"\(scheme)://\" is not supported "
                    + "(expected postgresql://, postgresql+psycopg2:// or another PostgreSQL driver)")
        }
        guard let components = URLComponents(string: "postgresql://" + text[schemeEnd.upperBound...]) else {
            throw .invalidArgument("connection string \"\(shown)\" is not a valid URL")
        }
        guard let user = components.percentEncodedUser.flatMap({ $0.removingPercentEncoding }), !user.isEmpty else {
            throw .invalidArgument("connection string \"\(shown)\" names no user: expected postgresql://user@host/database")
        }
        let password = components.percentEncodedPassword.flatMap { $0.removingPercentEncoding }
        let encodedPath = components.percentEncodedPath
        let path = encodedPath.hasPrefix("/") ? String(encodedPath.dropFirst()) : encodedPath
        let database = path.removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 }
        if let database, database.contains("/") {
            throw .invalidArgument("connection string \"\(shown)\": database name \"\(database)\" contains a slash")
        }
        let port = components.port ?? 5432
        guard (1...65535).contains(port) else {
            throw .invalidArgument("connection string \"\(shown)\": port \(port) is out of range")
        }
        let host = components.host ?? ""
        var settings = SQLConnection.Settings(
            endpoint: .tcp(host: host.isEmpty ? "localhost" : host, port: port),
            username: user, password: password, database: database)
        var query: [String: String] = [:]
        for item in components.queryItems ?? [] {
            guard query[item.name] == nil else {
                throw .invalidArgument("connection string \"\(shown)\": parameter \"\(item.name)\" is given twice")
            }
            query[item.name] = item.value ?? ""
        }
        if let socketFolder = query.removeValue(forKey: "host") {
            guard socketFolder.hasPrefix("/") else {
                throw .invalidArgument(
                    "connection string \"\(shown)\": host=\(socketFolder) must be a socket folder (an absolute path); put a TCP host after the @")
            }
            settings.endpoint = .unixSocket(path: "\(socketFolder)/.s.PGSQL.\(port)")
        }
        try apply(query, to: &settings, in: "connection string \"\(shown)\"")
        return settings
    }

    /// Applies libpq parameters (from the URL's query or from `connect-args`) to `settings`.
    public static func apply(_ parameters: [String: String], to settings: inout SQLConnection.Settings, in place: String) throws(StrataError) {
        for (name, value) in parameters.sorted(by: { $0.key < $1.key }) {
            switch name {
            case "sslmode":
                if value == "allow" {
                    settings.tls = .prefer
                } else if let mode = SQLConnection.Settings.TLSMode(rawValue: value) {
                    settings.tls = mode
                } else {
                    throw .invalidArgument("\(place): sslmode=\(value) is not one of disable, allow, prefer, require, verify-ca, verify-full")
                }
            case "connect_timeout":
                guard let seconds = Int(value), seconds > 0 else {
                    throw .invalidArgument("\(place): connect_timeout=\(value) is not a positive number of seconds")
                }
                settings.connectionTimeout = .seconds(seconds)
            case "application_name":
                settings.startupParameters["application_name"] = value
            case "options":
                for (key, setting) in try runtimeOptions(value, in: place) { settings.startupParameters[key] = setting }
            default:
                throw .invalidArgument(
                    "\(place): parameter \"\(name)\" is not supported; supported: \(SQLConnectionString.parameters.sorted().joined(separator: ", "))")
            }
        }
    }

    /// libpq's `options`: `-c name=value` (or `--name=value`) pairs separated by spaces.
    static func runtimeOptions(_ text: String, in place: String) throws(StrataError) -> [(String, String)] {
        var words = text.split(separator: " ").map(String.init)[...]
        var result: [(String, String)] = []
        while let word = words.popFirst() {
            let assignment: String
            if word == "-c", let next = words.popFirst() {
                assignment = next
            } else if word.hasPrefix("-c") {
                assignment = String(word.dropFirst(2))
            } else if word.hasPrefix("--") {
                assignment = String(word.dropFirst(2))
            } else {
                throw .invalidArgument("\(place): options=\"\(text)\": expected -c name=value settings, found \"\(word)\"")
            }
            guard let equals = assignment.firstIndex(of: "="), equals != assignment.startIndex else {
                throw .invalidArgument("\(place): options=\"\(text)\": \"\(assignment)\" is not name=value")
            }
            let name = assignment[..<equals].replacingOccurrences(of: "-", with: "_")
            result.append((name, String(assignment[assignment.index(after: equals)...])))
        }
        return result
    }

    /// The connection string with its password replaced, for error messages.
    static func redacted(_ text: String) -> String {
        guard let schemeEnd = text.range(of: "://"), let at = text[schemeEnd.upperBound...].lastIndex(of: "@") else { return text }
        let credentials = text[schemeEnd.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return text }
        return String(text[..<colon]) + ":***" + String(text[at...])
    }
}
