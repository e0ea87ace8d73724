import Foundation
import StrataCore

/// The `authorization:` section, as BuildGrid 0.9.1 defines it: how a request proves who it comes
/// from (`method`), what each caller may do (`acl-config`), and which requests need no credentials.
public struct AuthorizationSettings: Sendable {
    public enum Method: Sendable {
        /// No authentication. With an ACL (a Strata addition), the identity is the verified client
        /// certificate's subject (mutual TLS).
        case none
        /// A bearer JSON Web Token in the `authorization` header.
        case jwt(JWTSettings)
        /// `x-request-actor`, `x-request-subject`, `x-request-workflow`, set by a trusted proxy.
        case headers
        /// HTTP basic credentials (`authorization: Basic …`) checked against an htpasswd file.
        case htpasswd(HtpasswdFile)
    }

    public var method: Method
    /// nil: every authenticated request is allowed (BuildGrid without `acl-config`).
    public var accessControl: AccessControlList?
    /// Instances that serve requests without (valid) credentials, still subject to the ACL.
    public var allowUnauthenticatedInstances: Set<String>
    /// Requests from the loopback interface (127.0.0.0/8, ::1, unix sockets) need no credentials.
    public var allowLocalhostRequests: Bool

    public init(
        method: Method, accessControl: AccessControlList? = nil, allowUnauthenticatedInstances: Set<String> = [],
        allowLocalhostRequests: Bool = false
    ) {
        self.method = method
        self.accessControl = accessControl
        self.allowUnauthenticatedInstances = allowUnauthenticatedInstances
        self.allowLocalhostRequests = allowLocalhostRequests
    }

    /// Whether requests are checked at all: BuildGrid's `method: none` checks nothing; Strata's `none`
    /// with an ACL checks the client certificate's subject against it.
    public var isEnforced: Bool {
        if case .none = method { return accessControl != nil }
        return true
    }
}

/// `method: jwt`: where the keys come from and which audiences a token must name.
public struct JWTSettings: Sendable {
    public enum Algorithm: String, Sendable, CaseIterable {
        case hs256, rs256

        /// The token header's `alg` this algorithm accepts; any other is refused (no `none`, and no
        /// HS256 token signed with an RS256 public key as its secret).
        public var headerName: String { rawValue.uppercased() }
    }

    public enum Keys: Sendable {
        /// `secret:` a file's contents: the shared secret (hs256) or a PEM public key (rs256).
        case secret(String)
        /// `jwks-url:` one or more JWK Sets, fetched while serving every `refresh`, and on a token whose
        /// key id none of them has (at most once per `JWKSKeySet.unknownKeyRefetchInterval`).
        case jwks(urls: [String], refresh: Duration)
    }

    public var algorithm: Algorithm
    public var keys: Keys
    /// `audience:` a token's `aud` must name one of these; empty: `aud` is not checked.
    public var audiences: [String]

    public init(algorithm: Algorithm, keys: Keys, audiences: [String] = []) {
        self.algorithm = algorithm
        self.keys = keys
        self.audiences = audiences
    }
}

extension StrataError {
    static func unauthenticated(_ message: String) -> StrataError { .init(.unauthenticated, message) }
    static func permissionDenied(_ message: String) -> StrataError { .init(.permissionDenied, message) }
}
