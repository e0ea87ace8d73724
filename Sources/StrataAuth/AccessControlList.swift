import StrataCore

/// The `acl-config` file: per instance name, `allow: all` or a list of entries; a request is allowed
/// when one entry matches it. An instance the file does not name allows nothing.
public struct AccessControlList: Sendable {
    public enum Rule: Sendable {
        case all
        case entries([Entry])
    }

    /// One `{actor, subject, workflow, requests}` item. An absent field matches anything; a present
    /// pattern must match the whole claim (a missing claim is the empty string).
    public struct Entry: Sendable {
        public var actor: Pattern?
        public var subject: Pattern?
        public var workflow: Pattern?
        /// RPC method names such as `FindMissingBlobs`, `Write`, `UpdateActionResult`; nil: every one.
        public var requests: Set<String>?

        public init(actor: Pattern? = nil, subject: Pattern? = nil, workflow: Pattern? = nil, requests: Set<String>? = nil) {
            self.actor = actor
            self.subject = subject
            self.workflow = workflow
            self.requests = requests
        }

        public func allows(_ principal: Principal, method: String) -> Bool {
            if let actor, !actor.matches(principal.actor ?? "") { return false }
            if let subject, !subject.matches(principal.subject ?? "") { return false }
            if let workflow, !workflow.matches(principal.workflow ?? "") { return false }
            if let requests, !requests.contains(method) { return false }
            return true
        }
    }

    /// A regular expression matched against a whole claim (BuildGrid matches a prefix; the issue asks
    /// for the whole string, so `alice` does not also admit `alice-admin`).
    public struct Pattern: Sendable, CustomStringConvertible {
        public let source: String
        /// Not Sendable only because of its output type; matching reads it and never changes it.
        private nonisolated(unsafe) let regex: Regex<AnyRegexOutput>

        /// Fails with the regex engine's message when `source` is not a regular expression.
        public init(_ source: String) throws {
            self.source = source
            self.regex = try Regex(source)
            // Regex compiles its matcher on first use: once here, before requests share it.
            _ = try? regex.wholeMatch(in: "")
        }

        public func matches(_ text: String) -> Bool {
            (try? regex.wholeMatch(in: text)) != nil
        }

        public var description: String { source }
    }

    public var rules: [String: Rule]

    public init(rules: [String: Rule]) { self.rules = rules }

    public func allows(_ principal: Principal, instance: String, method: String) -> Bool {
        switch rules[instance] {
        case nil: false
        case .all: true
        case .entries(let entries): entries.contains { $0.allows(principal, method: method) }
        }
    }
}
