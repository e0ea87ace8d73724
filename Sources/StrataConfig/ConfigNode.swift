import Foundation
import StrataCore
import Yams

/// A YAML node with what an error needs to point at it: the file, the line and the key path.
struct ConfigNode {
    let node: Node
    let file: String
    let path: String
    let environment: [String: String]

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
    /// Strata does not implement, with a message saying so).
    func mapping(allowed: Set<String>, unsupported: Set<String> = []) throws(ConfigError) -> [String: ConfigNode] {
        guard case .mapping(let mapping) = node else {
            throw error("expected a mapping of options\(applicationTag.map { " for \($0)" } ?? "")")
        }
        var result: [String: ConfigNode] = [:]
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw child(keyNode, "?").error("keys must be strings") }
            let entry = child(value, key)
            if unsupported.contains(key) {
                throw ConfigError(file: file, line: keyNode.mark?.line, path: entry.path,
                                  message: "option \"\(key)\" is not supported by Strata yet")
            }
            guard allowed.contains(key) else {
                throw ConfigError(file: file, line: keyNode.mark?.line, path: entry.path,
                                  message: "unknown option \"\(key)\"; expected one of: \(allowed.sorted().joined(separator: ", "))")
            }
            guard result[key] == nil else {
                throw ConfigError(file: file, line: keyNode.mark?.line, path: entry.path, message: "option \"\(key)\" is given twice")
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
        case "!expand-vars": return expandVariables(text)
        case "!expand-path": return expandPath(text)
        case "!read-file":
            let path = expandPath(text)
            do {
                return try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw self.error("cannot read \(path): \(error.localizedDescription)")
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

    /// `$NAME` and `${NAME}` from the environment; unknown names stay as written (like Python's
    /// os.path.expandvars, which BuildGrid uses).
    func expandVariables(_ text: String) -> String {
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
            if !name.isEmpty, let value = environment[name] {
                out += value
            } else {
                out += text[index..<end]
            }
            index = end
        }
        return out
    }

    func expandPath(_ text: String) -> String {
        let expanded = expandVariables(text)
        if expanded == "~" || expanded.hasPrefix("~/") {
            let home = environment["HOME"] ?? NSHomeDirectory()
            return home + expanded.dropFirst()
        }
        return expanded
    }
}
