import Foundation
import JWTKit
import StrataCore
import Synchronization

/// Verifies a bearer JWT by `JWTSettings` and turns its claims into a `Principal`: `act` (else `sub`)
/// is the actor, `sub` the subject, `aud` (its first value, else the first configured audience) the
/// workflow, as BuildGrid 0.9.1 does. Every refusal is UNAUTHENTICATED saying which check failed.
public final class JWTAuthenticator: Sendable {
    public let settings: JWTSettings
    /// `secret:` the key, parsed when the configuration loads so that a bad one is a configuration error.
    private let secretKey: SecretKey?
    /// The collection the secret key is added to on first use (adding is asynchronous).
    private let secretKeys = JWTKeyCollection()
    private let secretKeyAdded = Atomic<Bool>(false)
    /// `jwks-url:` the fetched key sets.
    public let keySet: JWKSKeySet?
    public static let minimumHS256SecretBytes = 32

    /// Tokens verified recently, with what they proved: a client sends the same token with every call,
    /// and verifying it (base64, JSON, the signature) costs about as much as a small RPC. A cached
    /// token is still checked against its time claims on each use, and verified afresh once its entry
    /// is `verifiedTokenLifetime` old, so a key withdrawn from a JWKS stops working within that time.
    private let verifiedTokens = Mutex(LRUDictionary<String, VerifiedToken>(capacity: JWTAuthenticator.verifiedTokenCapacity))
    static let verifiedTokenCapacity: Int64 = 4096
    static let verifiedTokenLifetime: Duration = .seconds(60)

    private struct VerifiedToken: Sendable {
        let claims: Claims
        let verifiedAt: ContinuousClock.Instant
    }

    private enum SecretKey: Sendable {
        case hmac(HMACKey)
        case rsa(Insecure.RSA.PublicKey)
    }

    /// `keySet` must be given for `Keys.jwks`. Fails (with a message for the configuration error) when the
    /// secret is not a key of the algorithm.
    public init(settings: JWTSettings, keySet: JWKSKeySet? = nil) throws(StrataError) {
        self.settings = settings
        switch settings.keys {
        case .secret(let secret):
            switch settings.algorithm {
            case .hs256:
                // RFC 7518 §3.2: an HS256 key at least as long as the hash (jwt-kit asserts it, too).
                guard secret.utf8.count >= Self.minimumHS256SecretBytes else {
                    throw .invalidArgument(
                        "the hs256 secret is \(secret.utf8.count) bytes; it must be at least \(Self.minimumHS256SecretBytes) (RFC 7518 section 3.2)")
                }
                secretKey = .hmac(HMACKey(from: secret))
            case .rs256:
                do {
                    secretKey = .rsa(try Insecure.RSA.PublicKey(pem: secret))
                } catch {
                    throw .invalidArgument("algorithm rs256 needs the secret file to hold a PEM RSA public key of at least 2048 bits: \(error)")
                }
            }
            self.keySet = nil
        case .jwks:
            guard let keySet else { throw .invalidArgument("jwks-url needs a JWKS key set") }
            secretKey = nil
            self.keySet = keySet
        }
    }

    /// The principal of a valid token; UNAUTHENTICATED saying what is wrong with any other.
    public func principal(token: String) async throws(StrataError) -> Principal {
        let now = ContinuousClock.now
        let cached = verifiedTokens.withLock { tokens in
            tokens.get(token).flatMap { now - $0.verifiedAt < Self.verifiedTokenLifetime ? $0.claims : nil }
        }
        if let cached { return try check(cached) }
        let header = try Self.header(of: token)
        guard header.alg == settings.algorithm.headerName else {
            throw .unauthenticated(
                "token signed with \(header.alg.map { "\"\(StrataError.echo($0))\"" } ?? "no alg"); this server accepts \(settings.algorithm.headerName) only")
        }
        let claims = try await verifiedClaims(token, kid: header.kid)
        let principal = try check(claims)
        verifiedTokens.withLock { _ = $0.insert(token, VerifiedToken(claims: claims, verifiedAt: now), cost: 1) }
        return principal
    }

    private func verifiedClaims(_ token: String, kid: String?) async throws(StrataError) -> Claims {
        if let secretKey {
            if !secretKeyAdded.load(ordering: .acquiring) {
                switch secretKey {
                case .hmac(let key): await secretKeys.add(hmac: key, digestAlgorithm: .sha256)
                case .rsa(let key): await secretKeys.add(rsa: key, digestAlgorithm: .sha256)
                }
                secretKeyAdded.store(true, ordering: .releasing)
            }
            return try await Self.verify(token, with: secretKeys, kid: kid)
        }
        guard let keySet else { throw .unauthenticated("no key to verify tokens with") }
        if let keys = keySet.keys, keySet.has(kid: kid) {
            return try await Self.verify(token, with: keys, kid: kid)
        }
        // A key id none of the fetched sets has: the issuer may have rotated its keys since the last
        // fetch. Fetch again (rate-limited) before refusing the token.
        await keySet.refetchForUnknownKey()
        guard let keys = keySet.keys, keySet.has(kid: kid) else {
            throw .unauthenticated(keySet.unknownKeyMessage(kid: kid))
        }
        return try await Self.verify(token, with: keys, kid: kid)
    }

    private static func verify(_ token: String, with keys: JWTKeyCollection, kid: String?) async throws(StrataError) -> Claims {
        do {
            return try await keys.verify(token, as: Claims.self)
        } catch let error as JWTError {
            switch error.errorType {
            case .signatureVerificationFailed:
                throw .unauthenticated("bad signature: the token was not signed by a key this server trusts")
            case .malformedToken:
                throw .unauthenticated("malformed token: \(error.reason ?? "not a JWT")")
            case .noKeyProvided, .unknownKID, .missingKIDHeader:
                throw .unauthenticated("unknown key id \(kid.map { "\"\(StrataError.echo($0))\"" } ?? "(none)")")
            default:
                throw .unauthenticated("invalid token: \(error.reason ?? "\(error.errorType)")")
            }
        } catch {
            throw .unauthenticated("invalid token: \(error)")
        }
    }

    /// The time claims (`exp` required, as BuildGrid requires it) and the audience.
    private func check(_ claims: Claims) throws(StrataError) -> Principal {
        let now = Date()
        guard let expiry = claims.exp?.value else {
            throw .unauthenticated("malformed token: it has no exp (expiry) claim, which this server requires")
        }
        guard expiry > now else {
            throw .unauthenticated("expired token: its exp is \(Self.describe(expiry))")
        }
        if let notBefore = claims.nbf?.value, notBefore > now {
            throw .unauthenticated("token not yet valid: its nbf is \(Self.describe(notBefore))")
        }
        let audiences = claims.aud?.value ?? []
        if !settings.audiences.isEmpty, !audiences.contains(where: settings.audiences.contains) {
            let given = audiences.isEmpty ? "no aud claim" : "aud \(audiences.map { "\"\(StrataError.echo($0))\"" }.joined(separator: ", "))"
            throw .unauthenticated(
                "wrong audience: the token has \(given); this server accepts \(settings.audiences.map { "\"\($0)\"" }.joined(separator: ", "))")
        }
        let workflow = audiences.first ?? settings.audiences.first
        let actor = claims.act?.value ?? claims.sub
        return Principal(source: .jwt, actor: actor, subject: claims.sub, workflow: workflow)
    }

    private static func describe(_ date: Date) -> String {
        date.formatted(.iso8601)
    }

    /// The token's header: `alg` and `kid`. Any token that is not three base64url parts with a JSON
    /// header is malformed.
    static func header(of token: String) throws(StrataError) -> (alg: String?, kid: String?) {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else {
            throw .unauthenticated("malformed token: a JWT has 3 dot-separated parts, this one has \(parts.count)")
        }
        guard let bytes = base64URLDecoded(parts[0]),
              let object = try? JSONSerialization.jsonObject(with: bytes) as? [String: Any]
        else { throw .unauthenticated("malformed token: its header is not base64url-encoded JSON") }
        return (object["alg"] as? String, object["kid"] as? String)
    }

    static func base64URLDecoded(_ text: Substring) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64.append("=") }
        return Data(base64Encoded: base64)
    }
}

/// The claims Strata reads. Signature checks happen in jwt-kit; the claims are checked by
/// `JWTAuthenticator.check` so that each failure can say which claim was wrong.
struct Claims: JWTPayload {
    var exp: ExpirationClaim?
    var nbf: NotBeforeClaim?
    var sub: String?
    var act: ActorClaim?
    var aud: AudienceClaim?

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// `act`: a string (BuildGrid's tokens), or RFC 8693's object, whose `sub` names the actor.
struct ActorClaim: Codable, Sendable {
    var value: String?

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            value = text
        } else if let object = try? container.decode([String: String].self) {
            value = object["sub"]
        } else {
            value = nil
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }
}
