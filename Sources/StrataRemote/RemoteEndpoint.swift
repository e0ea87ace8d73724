import StrataCore

/// Where a remote REAPI server listens and whether the scheme asks for TLS, parsed from the URL an
/// operator writes: `grpc://HOST:PORT` or `http://HOST:PORT` (plaintext), `grpcs://HOST:PORT` or
/// `https://HOST:PORT` (TLS), `unix:/PATH` or `unix:///PATH` (a Unix socket, TLS only when TLS files
/// are given, as BuildGrid does), or a bare `HOST:PORT` (plaintext). The port defaults to 50051, as
/// BuildGrid's clients do; `[::1]` brackets an IPv6 address.
public struct RemoteEndpoint: Sendable, Equatable, CustomStringConvertible {
    public enum Address: Sendable, Equatable {
        case host(String, port: Int)
        case unixSocket(path: String)
    }

    public var address: Address
    /// The scheme was `grpcs` or `https`.
    public var schemeRequiresTLS: Bool

    public static let defaultPort = 50051

    public init(address: Address, schemeRequiresTLS: Bool) {
        self.address = address
        self.schemeRequiresTLS = schemeRequiresTLS
    }

    public init(url: String) throws(StrataError) {
        if url.hasPrefix("unix:") {
            var path = String(url.dropFirst("unix:".count))
            if path.hasPrefix("//") { path.removeFirst(2) }
            guard !path.isEmpty else { throw .invalidArgument("\(url): expected unix:/PATH of a socket") }
            self.init(address: .unixSocket(path: path), schemeRequiresTLS: false)
            return
        }
        var rest = Substring(url)
        var requiresTLS = false
        if let separator = rest.range(of: "://") {
            switch rest[..<separator.lowerBound].lowercased() {
            case "grpc", "http": requiresTLS = false
            case "grpcs", "https": requiresTLS = true
            default:
                throw .invalidArgument("\(url): unknown scheme; expected grpc://, grpcs://, http://, https:// or unix:")
            }
            rest = rest[separator.upperBound...]
        }
        while rest.hasSuffix("/") { rest.removeLast() }
        guard !rest.isEmpty, !rest.contains("/") else {
            throw .invalidArgument("\(url): expected grpc://HOST:PORT or grpcs://HOST:PORT")
        }
        var host = rest
        var port = Self.defaultPort
        // The last colon separates the port, unless it is inside an IPv6 address's brackets.
        if let colon = rest.lastIndex(of: ":"), !rest[colon...].contains("]") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else {
                throw .invalidArgument("\(url): the port must be a number from 1 to 65535")
            }
            port = number
            host = rest[..<colon]
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else { throw .invalidArgument("\(url): expected a host before the port") }
        self.init(address: .host(String(host), port: port), schemeRequiresTLS: requiresTLS)
    }

    /// Whether `host` is a dotted IPv4 address.
    static func isIPv4(_ host: String) -> Bool {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { part in part.count <= 3 && UInt8(part) != nil }
    }

    public var description: String {
        switch address {
        case .host(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unixSocket(let path): "unix:\(path)"
        }
    }
}
