import StrataAuth
import StrataCore
import Yams

/// `authorization:` (BuildGrid 0.9.1's keys) and the `acl-config` file it names. Reading the secret
/// and ACL files is all loading does: a JWKS is fetched only when serving starts.
struct AuthorizationConfig {
    var settings: AuthorizationSettings
    var authentication: Authentication
    /// The JWKS fetcher, run as a background service while serving.
    var keySet: JWKSKeySet?

    static let jwtOnlyKeys: Set<String> = ["secret", "algorithm", "jwks-url", "audience", "jwks-fetch-minutes"]
    static let defaultJWKSFetchMinutes = 60

    static func parse(_ node: ConfigNode, instanceNames: Set<String>, warnings: inout [String]) throws(ConfigError) -> AuthorizationConfig {
        let options = try node.mapping(
            allowed: Set(["method", "acl-config", "allow-unauthenticated-instances", "allow-localhost-requests", "htpasswd"]).union(jwtOnlyKeys),
            unsupported: ["url", "request-timeout", "credentials"])
        guard let methodNode = options["method"] else { throw node.error("\"method\" is required: none, jwt, headers or htpasswd") }
        let methodName = try methodNode.string()
        let method: AuthorizationSettings.Method
        var keySet: JWKSKeySet?
        if methodName != "htpasswd", let htpasswd = options["htpasswd"] { throw htpasswd.error("\"htpasswd\" applies to method: htpasswd only") }
        switch methodName {
        case "htpasswd":
            if let key = jwtOnlyKeys.sorted().first(where: { options[$0] != nil }), let entry = options[key] {
                throw entry.error("\"\(key)\" applies to method: jwt only")
            }
            method = .htpasswd(try htpasswdFile(node, options))
        case "none", "headers":
            if let key = jwtOnlyKeys.sorted().first(where: { options[$0] != nil }), let entry = options[key] {
                throw entry.error("\"\(key)\" applies to method: jwt only")
            }
            method = methodName == "none" ? .none : .headers
        case "jwt":
            let settings = try jwtSettings(node, options)
            if case .jwks(let urls, let refresh) = settings.keys {
                keySet = JWKSKeySet(urls: urls, refresh: refresh)
            }
            method = .jwt(settings)
        case "server":
            throw methodNode.error("method \"server\" (an external auth server) is not supported by Strata yet")
        default:
            throw methodNode.error("unknown method \"\(methodName)\"; expected none, jwt, headers or htpasswd")
        }
        var settings = AuthorizationSettings(method: method)
        if let aclNode = options["acl-config"] {
            settings.accessControl = try accessControlList(aclNode, instanceNames: instanceNames, warnings: &warnings)
        }
        if let list = options["allow-unauthenticated-instances"] {
            settings.allowUnauthenticatedInstances = Set(try list.sequence().map { (entry) throws(ConfigError) in try entry.string() })
        }
        if let localhost = options["allow-localhost-requests"] { settings.allowLocalhostRequests = try localhost.bool() }

        var tokens: JWTAuthenticator?
        if case .jwt(let jwt) = method {
            do {
                tokens = try JWTAuthenticator(settings: jwt, keySet: keySet)
            } catch {
                throw (options["secret"] ?? node).error(error.message)
            }
        }
        return AuthorizationConfig(
            settings: settings, authentication: Authentication(settings: settings, tokens: tokens), keySet: keySet)
    }

    private static func jwtSettings(_ node: ConfigNode, _ options: [String: ConfigNode]) throws(ConfigError) -> JWTSettings {
        var algorithm: JWTSettings.Algorithm?
        if let algorithmNode = options["algorithm"] {
            let name = try algorithmNode.string()
            guard let parsed = JWTSettings.Algorithm(rawValue: name.lowercased()) else {
                throw algorithmNode.error("algorithm \"\(name)\" is not supported; expected hs256 or rs256")
            }
            algorithm = parsed
        }
        let audiences = try options["audience"].map { (entry) throws(ConfigError) in try stringOrList(entry) } ?? []
        switch (options["secret"], options["jwks-url"]) {
        case (let secretNode?, nil):
            guard let algorithm else { throw node.error("secret needs an algorithm: hs256 (a shared secret) or rs256 (a PEM public key)") }
            if let minutes = options["jwks-fetch-minutes"] { throw minutes.error("jwks-fetch-minutes applies to jwks-url only") }
            let path = try secretNode.string()
            switch readTextFile(atPath: path) {
            case .success(let contents):
                // BuildGrid strips the file's surrounding whitespace (a trailing newline is not part of the secret).
                let secret = contents.trimmingCharacters(in: .whitespacesAndNewlines)
                return JWTSettings(algorithm: algorithm, keys: .secret(secret), audiences: audiences)
            case .failure(let failure):
                throw secretNode.error("cannot read the secret file \(path): \(failure.reason)")
            }
        case (nil, let urlNode?):
            if let algorithm, algorithm != .rs256 {
                throw options["algorithm"]!.error("jwks-url verifies with the JWK Set's public keys: algorithm must be rs256")
            }
            guard !audiences.isEmpty else { throw node.error("jwks-url needs an audience (one or a list) that tokens must name") }
            let urls = try stringOrList(urlNode)
            for url in urls where !(url.hasPrefix("https://") || url.hasPrefix("http://")) {
                throw urlNode.error("jwks-url \"\(url)\" is not an http:// or https:// URL")
            }
            let minutes = try options["jwks-fetch-minutes"]?.int(minimum: 1) ?? defaultJWKSFetchMinutes
            return JWTSettings(algorithm: .rs256, keys: .jwks(urls: urls, refresh: .seconds(minutes * 60)), audiences: audiences)
        case (_?, _?):
            throw node.error("give either secret or jwks-url, not both")
        case (nil, nil):
            throw node.error("method jwt needs a secret (a file) or a jwks-url")
        }
    }

    /// `method: htpasswd`'s `htpasswd:` file (bcrypt or {SHA} hashes), read and parsed now.
    private static func htpasswdFile(_ node: ConfigNode, _ options: [String: ConfigNode]) throws(ConfigError) -> HtpasswdFile {
        guard let fileNode = options["htpasswd"] else { throw node.error("method htpasswd needs htpasswd: the path of an htpasswd file") }
        let path = try fileNode.string()
        switch readTextFile(atPath: path) {
        case .success(let contents):
            do throws(StrataError) {
                return try HtpasswdFile(path: path, contents: contents)
            } catch {
                throw fileNode.error(error.message)
            }
        case .failure(let failure):
            throw fileNode.error("cannot read the htpasswd file \(path): \(failure.reason)")
        }
    }

    private static func stringOrList(_ node: ConfigNode) throws(ConfigError) -> [String] {
        if case .sequence = node.node {
            let values = try node.sequence().map { (entry) throws(ConfigError) in try entry.string() }
            guard !values.isEmpty else { throw node.error("expected at least one value") }
            return values
        }
        return [try node.string()]
    }

    /// The `acl-config` file: `instance-name: {allow: all}` or `{allow: [{actor, subject, workflow, requests}, ...]}`.
    /// Errors point into that file.
    static func accessControlList(_ pathNode: ConfigNode, instanceNames: Set<String>, warnings: inout [String]) throws(ConfigError) -> AccessControlList {
        let path = try pathNode.string()
        let text: String
        switch readTextFile(atPath: path) {
        case .success(let contents): text = contents
        case .failure(let failure): throw pathNode.error("cannot read the acl-config file \(path): \(failure.reason)")
        }
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw ConfigError(file: path, line: nil, path: "", message: "the acl-config file is empty")
            }
            root = node
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(file: path, line: nil, path: "", message: "not valid YAML: \(error)")
        }
        let file = ConfigNode(node: root, file: path, path: "", environment: pathNode.environment)
        guard case .mapping(let mapping) = root else {
            throw file.error("expected a mapping of instance names to {allow: all} or {allow: [...]}")
        }
        var rules: [String: AccessControlList.Rule] = [:]
        for (keyNode, value) in mapping {
            guard let instance = keyNode.string else { throw file.child(keyNode, "?").error("instance names must be strings") }
            let entry = file.child(value, instance)
            guard rules[instance] == nil else { throw entry.error("instance \"\(instance)\" is given twice") }
            if !instanceNames.contains(instance) {
                warnings.append("\(path):\(keyNode.mark?.line ?? 0): acl-config names instance \"\(instance)\", which is not configured")
            }
            let options = try entry.mapping(allowed: ["allow"])
            guard let allow = options["allow"] else { throw entry.error("\"allow\" is required: all, or a list of {actor, subject, workflow, requests}") }
            if case .scalar = allow.node {
                guard try allow.string() == "all" else { throw allow.error("expected all, or a list of {actor, subject, workflow, requests}") }
                rules[instance] = .all
            } else {
                rules[instance] = .entries(try allow.sequence().map { (item) throws(ConfigError) in try aclEntry(item) })
            }
        }
        return AccessControlList(rules: rules)
    }

    private static func aclEntry(_ node: ConfigNode) throws(ConfigError) -> AccessControlList.Entry {
        let options = try node.mapping(allowed: ["actor", "subject", "workflow", "requests"])
        func pattern(_ key: String) throws(ConfigError) -> AccessControlList.Pattern? {
            guard let patternNode = options[key] else { return nil }
            let source = try patternNode.string()
            do {
                return try AccessControlList.Pattern(source)
            } catch {
                throw patternNode.error("\"\(source)\" is not a regular expression: \(error)")
            }
        }
        var entry = AccessControlList.Entry(actor: try pattern("actor"), subject: try pattern("subject"), workflow: try pattern("workflow"))
        if let requests = options["requests"] {
            entry.requests = Set(try requests.sequence().map { (name) throws(ConfigError) in try name.string() })
        }
        return entry
    }
}
