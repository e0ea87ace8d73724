/// A configuration problem, located: "FILE:LINE: WHERE: WHAT".
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int?
    public let path: String
    public let message: String
    /// Raised where an item uses one that already failed (a storage through the alias of a storage that
    /// did not parse): that failure is already reported, so this one stops the item and says nothing.
    let isFollowOn: Bool

    public init(file: String, line: Int?, path: String, message: String) {
        self.init(file: file, line: line, path: path, message: message, isFollowOn: false)
    }

    init(file: String, line: Int?, path: String, message: String, isFollowOn: Bool) {
        self.file = file
        self.line = line
        self.path = path
        self.message = message
        self.isFollowOn = isFollowOn
    }

    public var description: String {
        let location = line.map { "\(file):\($0)" } ?? file
        return path.isEmpty ? "\(location): \(message)" : "\(location): \(path): \(message)"
    }
}

/// Every problem of one configuration file, in file order: what loading throws when there are two or
/// more (one alone is thrown as its `ConfigError`), so that an operator fixes them all in one pass.
public struct ConfigErrors: Error, CustomStringConvertible, Equatable {
    public let errors: [ConfigError]

    public init(_ errors: [ConfigError]) {
        self.errors = errors
    }

    /// One problem a line.
    public var description: String { errors.map(\.description).joined(separator: "\n") }

    /// `errors` as a thrown error: nil when empty, the `ConfigError` itself when there is one.
    static func combining(_ errors: [ConfigError]) -> (any Error)? {
        // Stable: problems on one line keep the order the builder met them in.
        let sorted = errors.enumerated().sorted { a, b in
            let (lineA, lineB) = (a.element.line ?? 0, b.element.line ?? 0)
            return lineA != lineB ? lineA < lineB : a.offset < b.offset
        }.map(\.element)
        switch sorted.count {
        case 0: return nil
        case 1: return sorted[0]
        default: return ConfigErrors(sorted)
        }
    }
}
