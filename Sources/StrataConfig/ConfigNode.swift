import Foundation
import StrataCore
import StrataStorage
import Yams

/// A YAML node with what an error needs to point at it: the file, the line and the key path.
struct ConfigNode {
    let node: Node
    let file: String
    let path: String
    let environment: [String: String]
    /// The line of the key this node is the value of, if it is one: where a warning about the option
    /// points (a block value starts on the line after its key).
    var keyLine: Int? = nil

    var line: Int? { node.mark?.line }

    /// The node's `!tag`, if it has an application tag.
    var applicationTag: String? {
        let raw = node.tag.rawValue
        return raw.hasPrefix("!") ? raw : nil
    }

    /// Identity of the node in its file: aliases resolve to the anchored node and share its mark, so
    /// `*storage` in two places means one object.
    var identity: String { "\(node.mark?.line ?? 0):\(node.mark?.column ?? 0)" }

    func error(_ message: String) -> ConfigError {
        ConfigError(file: file, line: line, path: path, message: message)
    }

    func child(_ node: Node, _ component: String) -> ConfigNode {
        ConfigNode(node: node, file: file, path: path.isEmpty ? component : "\(path).\(component)", environment: environment)
    }

    func element(_ node: Node, _ index: Int) -> ConfigNode {
        ConfigNode(node: node, file: file, path: "\(path)[\(index)]", environment: environment)
    }

    /// The mapping's entries, refusing keys outside `allowed` (or in `unsupported`, BuildGrid options
    /// Strata does not implement, with a message saying so): the first such key is thrown.
    func mapping(allowed: Set<String>, unsupported: Set<String> = []) throws(ConfigError) -> [String: ConfigNode] {
        var problems: [ConfigError] = []
        let result = try mapping(allowed: allowed, unsupported: unsupported, problems: &problems)
        if let first = problems.first { throw first }
        return result
    }

    /// The mapping's entries; each key outside `allowed`, in `unsupported` or given twice is added to
    /// `problems` and left out, so that every one of them is reported. Throws only if this is no mapping.
    func mapping(
        allowed: Set<String>, unsupported: Set<String> = [], problems: inout [ConfigError]
    ) throws(ConfigError) -> [String: ConfigNode] {
        guard case .mapping(let mapping) = node else {
            throw error("expected a mapping of options\(applicationTag.map { " for \($0)" } ?? "")")
        }
        var result: [String: ConfigNode] = [:]
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else {
                problems.append(child(keyNode, "?").error("keys must be strings"))
                continue
            }
            var entry = child(value, key)
            entry.keyLine = keyNode.mark?.line
            if unsupported.contains(key) {
                problems.append(ConfigError(file: file, line: keyNode.mark?.line, path: entry.path,
                                            message: "option \"\(key)\" is not supported by Strata yet"))
                continue
            }
            guard allowed.contains(key) else {
                let suggestion = closestMatch(to: key, among: allowed).map { " (did you mean \"\($0)\"?)" } ?? ""
                problems.append(ConfigError(file: file, line: keyNode.mark?.line, path: entry.path,
                                            message: "unknown option \"\(key)\"\(suggestion); expected one of: \(allowed.sorted().joined(separator: ", "))"))
                continue
            }
            guard result[key] == nil else {
                problems.append(ConfigError(file: file, line: keyNode.mark?.line, path: entry.path, message: "option \"\(key)\" is given twice"))
                continue
            }
            result[key] = entry
        }
        return result
    }

    func sequence() throws(ConfigError) -> [ConfigNode] {
        guard case .sequence(let sequence) = node else { throw error("expected a list") }
        return sequence.enumerated().map { element($1, $0) }
    }

    /// A string, after BuildGrid's string tags: `!expand-path`, `!expand-vars`, `!read-file`.
    func string() throws(ConfigError) -> String {
        guard case .scalar(let scalar) = node else { throw error("expected a string") }
        let text = scalar.string
        switch applicationTag {
        case nil: return text
        case "!expand-vars": return try expandVariables(text)
        case "!expand-path": return try expandPath(text)
        case "!read-file":
            let path = try expandPath(text)
            switch readTextFile(atPath: path) {
            case .success(let contents): return contents.trimmingCharacters(in: .whitespacesAndNewlines)
            case .failure(let failure): throw self.error("cannot read \(path): \(failure.reason)")
            }
        case let tag?: throw self.error("tag \(tag) does not apply to a string")
        }
    }

    /// The node, or for `!expand-vars` the node its expanded text resolves to, so that numbers and
    /// booleans can come from the environment (`port: !expand-vars "${REDIS_PORT}"`).
    private func resolvedScalar() throws(ConfigError) -> Node? {
        guard applicationTag == "!expand-vars" else { return applicationTag == nil ? node : nil }
        guard case .scalar = node else { return nil }
        return Node(try string())
    }

    func bool() throws(ConfigError) -> Bool {
        guard let value = try resolvedScalar()?.bool else { throw error("expected true or false") }
        return value
    }

    func int(minimum: Int = 0) throws(ConfigError) -> Int {
        guard let value = try resolvedScalar()?.int else { throw error("expected an integer") }
        guard value >= minimum else { throw error("must be at least \(minimum)") }
        return value
    }

    /// A number of seconds, whole or fractional (`!expand-vars` too), at least 0.001 (or 0 when
    /// `allowZero`) and at most `maximum`.
    func seconds(allowZero: Bool = false, maximum: Double = Duration.maximumSettingSeconds) throws(ConfigError) -> Duration {
        let value = try secondsNumber()
        guard allowZero ? value >= 0 : value >= 0.001 else { throw error(allowZero ? "must not be negative" : "must be at least 0.001") }
        guard value <= maximum, let duration = Duration(settingSeconds: value) else {
            throw error(maximum == Duration.maximumSettingSeconds
                ? "must be at most \(Int(maximum)) seconds (100 years)" : "must be at most \(Int(maximum)) seconds")
        }
        return duration
    }

    /// A finite number of seconds, whole or fractional (`!expand-vars` too), not checked further.
    func secondsNumber() throws(ConfigError) -> Double {
        guard case .scalar(let scalar)? = try resolvedScalar(), let value = Double(scalar.string), value.isFinite
        else { throw error("expected a number of seconds") }
        return value
    }

    /// A disk store's budget: a size, or `N%free`, N% of the space the store could use, i.e. the free
    /// space on the filesystem of `storagePath` plus what the store already holds there (so a restart
    /// with a full cache keeps its budget, and the cache and everything else share the disk). Computed
    /// now, once: `description` says how, for the start-up log.
    func diskBudget(storagePath: String) throws(ConfigError) -> (bytes: Int64, description: String) {
        let text = applicationTag == nil ? (node.string ?? "") : try string()
        guard text.hasSuffix("%free") else {
            let bytes = try size()
            return (bytes, "\(bytes) bytes")
        }
        guard let percent = Int(text.dropLast("%free".count)), (1...100).contains(percent) else {
            throw error("\"\(text)\" is not a share of free space: use 1%free to 100%free, e.g. 50%free")
        }
        guard let free = availableBytes(onFileSystemOf: storagePath) else {
            throw error("cannot read the free space of the filesystem that holds \(storagePath)")
        }
        let held = DiskBlobStore.storedBytes(path: storagePath)
        let (usable, overflow) = free.addingReportingOverflow(held)
        let bytes = max(1, overflow ? .max / 100 * Int64(percent) : Int64((Double(usable) * Double(percent) / 100).rounded(.down)))
        return (bytes, "\(text) = \(describeBytes(bytes)): \(percent)% of \(describeBytes(free)) free + \(describeBytes(held)) held")
    }

    /// A byte size: an integer or a string such as `2048M`, `1G`, `512kb` (binary units, any case).
    func size() throws(ConfigError) -> Int64 {
        if let value = node.int, applicationTag == nil {
            guard value > 0 else { throw error("a size must be positive") }
            return Int64(value)
        }
        let text = try string()
        guard let value = parseByteSize(text) else {
            throw error("\"\(text)\" is not a size: use bytes or a number with K, M, G or T (binary), e.g. 2048M")
        }
        guard value > 0 else { throw error("a size must be positive") }
        return value
    }

    /// `$NAME` and `${NAME}` from the environment. An unset name is an error that names it, where
    /// BuildGrid (Python's os.path.expandvars) keeps it as written: a literal `${REDIS_PORT}` only fails
    /// later, as a bad port or a folder named `$DATA`. A `$` not followed by a name stays as it is.
    func expandVariables(_ text: String) throws(ConfigError) -> String {
        var out = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            guard character == "$" else {
                out.append(character)
                index = text.index(after: index)
                continue
            }
            let afterDollar = text.index(after: index)
            var nameStart = afterDollar
            var braced = false
            if afterDollar < text.endIndex, text[afterDollar] == "{" {
                braced = true
                nameStart = text.index(after: afterDollar)
            }
            var nameEnd = nameStart
            while nameEnd < text.endIndex, text[nameEnd].isLetter || text[nameEnd].isNumber || text[nameEnd] == "_" {
                nameEnd = text.index(after: nameEnd)
            }
            let name = String(text[nameStart..<nameEnd])
            var end = nameEnd
            if braced {
                guard end < text.endIndex, text[end] == "}" else {
                    out.append(character)
                    index = afterDollar
                    continue
                }
                end = text.index(after: end)
            }
            if name.isEmpty {
                out += text[index..<end]
            } else if let value = environment[name] {
                out += value
            } else {
                throw error("environment variable \(name) is not set (\(applicationTag ?? "a string") \"\(text)\")")
            }
            index = end
        }
        return out
    }

    func expandPath(_ text: String) throws(ConfigError) -> String {
        let expanded = try expandVariables(text)
        if expanded == "~" || expanded.hasPrefix("~/") {
            let home = environment["HOME"] ?? NSHomeDirectory()
            return home + expanded.dropFirst()
        }
        return expanded
    }
}

/// Why a file could not be read, as an operator needs to hear it: "No such file or directory", "it is
/// a directory" (Foundation says "NSCocoaErrorDomain error 256").
struct TextFileError: Error {
    let reason: String
}

/// The whole of a UTF-8 text file (a configuration, a `!read-file` secret).
func readTextFile(atPath path: String) -> Result<String, TextFileError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(TextFileError(reason: String(cString: strerror(errno)))) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { return .failure(TextFileError(reason: String(cString: strerror(errno)))) }
    guard (info.st_mode & S_IFMT) != S_IFDIR else { return .failure(TextFileError(reason: "it is a directory, not a file")) }
    var data = Data()
    var buffer = [UInt8](repeating: 0, count: 64 << 10)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n < 0 {
            if errno == EINTR { continue }
            return .failure(TextFileError(reason: String(cString: strerror(errno))))
        }
        if n == 0 { break }
        data.append(contentsOf: buffer[..<n])
    }
    guard let text = String(data: data, encoding: .utf8) else { return .failure(TextFileError(reason: "it is not UTF-8 text")) }
    return .success(text)
}

/// The candidate closest to a misspelt `word` (a config key or tag), if one is close enough to be what
/// was meant: one edit per four letters, between one and three, counting a swap of two neighbours as
/// one edit (`sise` is `size`, `!lru-action-cahce` is `!lru-action-cache`, `!floppy-storage` is nothing).
func closestMatch(to word: String, among candidates: some Sequence<String>) -> String? {
    let limit = min(3, max(1, word.count / 4))
    var best: (candidate: String, distance: Int)?
    for candidate in candidates.sorted() {
        let distance = editDistance(word.lowercased(), candidate.lowercased())
        if distance <= limit, distance < (best?.distance ?? .max) { best = (candidate, distance) }
    }
    return best?.candidate
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    var previous2 = [Int](repeating: 0, count: b.count + 1)
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                current[j] = min(current[j], previous2[j - 2] + 1)
            }
        }
        (previous2, previous, current) = (previous, current, previous2)
    }
    return previous[b.count]
}
