import StrataCore

/// What a request brought to prove who it comes from, read from its headers and its connection.
public struct RequestCredentials: Sendable {
    /// The `authorization` header.
    public var authorization: String?
    /// `x-request-actor`, `x-request-subject`, `x-request-workflow` (`method: headers`).
    public var actorHeader: String?
    public var subjectHeader: String?
    public var workflowHeader: String?
    /// The verified client certificate's subject, as an RFC 4514 string (mutual TLS).
    public var clientCertificateSubject: String?

    public init(
        authorization: String? = nil, actorHeader: String? = nil, subjectHeader: String? = nil,
        workflowHeader: String? = nil, clientCertificateSubject: String? = nil
    ) {
        self.authorization = authorization
        self.actorHeader = actorHeader
        self.subjectHeader = subjectHeader
        self.workflowHeader = workflowHeader
        self.clientCertificateSubject = clientCertificateSubject
    }
}

/// Turns a request's credentials into a `Principal` by the configured method, or says what was wrong
/// with them. It rejects nothing itself: `AccessPolicy` decides once the instance is known.
public struct Authentication: Sendable {
    public let settings: AuthorizationSettings
    /// The JWT verifier of `method: jwt`.
    public let tokens: JWTAuthenticator?

    /// Builds the verifier; a JWKS is not fetched here (see `JWKSKeySet.run`).
    public init(settings: AuthorizationSettings, tokens: JWTAuthenticator?) {
        self.settings = settings
        self.tokens = tokens
    }

    /// The request's principal, or the reason (for UNAUTHENTICATED) its credentials do not give one.
    public func authenticate(_ credentials: RequestCredentials) async -> Result<Principal, StrataError> {
        switch settings.method {
        case .jwt:
            guard let tokens else { return .failure(.unauthenticated("JWT authorization has no verifier")) }
            guard let header = credentials.authorization else {
                return .failure(.unauthenticated("no token: the request has no \"authorization: Bearer <JWT>\" header"))
            }
            guard header.hasPrefix("Bearer ") else {
                return .failure(.unauthenticated("malformed authorization header: expected \"Bearer <JWT>\""))
            }
            do {
                return .success(try await tokens.principal(token: String(header.dropFirst("Bearer ".count))))
            } catch {
                return .failure(error)
            }
        case .headers:
            guard credentials.actorHeader != nil || credentials.subjectHeader != nil || credentials.workflowHeader != nil else {
                return .failure(.unauthenticated("no identity: the request has none of the x-request-actor, x-request-subject and x-request-workflow headers"))
            }
            return .success(Principal(
                source: .headers, actor: credentials.actorHeader, subject: credentials.subjectHeader,
                workflow: credentials.workflowHeader))
        case .htpasswd(let file):
            guard let header = credentials.authorization else {
                return .failure(.unauthenticated("no credentials: the request has no \"authorization: Basic base64(user:password)\" header"))
            }
            guard header.hasPrefix("Basic ") else {
                return .failure(.unauthenticated("malformed authorization header: expected \"Basic base64(user:password)\""))
            }
            return await file.principal(basicAuthorization: String(header.dropFirst("Basic ".count)))
        case .none:
            guard let subject = credentials.clientCertificateSubject else {
                return .failure(.unauthenticated("no client certificate: the connection is not mutual TLS"))
            }
            return .success(Self.principal(clientCertificateSubject: subject))
        }
    }

    /// A verified client certificate's subject as the ACL sees it: the actor (and subject).
    public static func principal(clientCertificateSubject subject: String) -> Principal {
        Principal(source: .clientCertificate, actor: subject, subject: subject)
    }
}
