import Foundation
import JWTKit
import StrataAuth
import StrataCore
import Synchronization
import Testing

@Suite struct JWTAuthenticatorTests {
    static let secret = "correct horse battery staple, 32 bytes or more"

    func hs256(audiences: [String] = []) throws -> Authentication {
        let settings = AuthorizationSettings(method: .jwt(JWTSettings(algorithm: .hs256, keys: .secret(Self.secret), audiences: audiences)))
        guard case .jwt(let jwt) = settings.method else { fatalError() }
        return Authentication(settings: settings, tokens: try JWTAuthenticator(settings: jwt))
    }

    /// The refusal's message, which must be UNAUTHENTICATED.
    func refusal(_ authentication: Authentication, _ header: String?) async throws -> String {
        switch await authentication.authenticate(RequestCredentials(authorization: header)) {
        case .success(let principal):
            Issue.record("accepted as \(principal)")
            return ""
        case .failure(let error):
            #expect(error.code == .unauthenticated, "\(error)")
            return error.message
        }
    }

    @Test func validTokenGivesActorSubjectAndWorkflow() async throws {
        let auth = try hs256(audiences: ["strata"])
        let token = try await TokenMaker.hs256(TestClaims(sub: "alice", act: "ci-bot", aud: ["strata", "other"]))
        let principal = try await auth.authenticate(RequestCredentials(authorization: "Bearer \(token)")).get()
        #expect(principal == Principal(source: .jwt, actor: "ci-bot", subject: "alice", workflow: "strata"))
        // Without `act`, the subject is the actor (BuildGrid).
        let plain = try await TokenMaker.hs256(TestClaims(sub: "bob", aud: ["strata"]))
        let bob = try await auth.authenticate(RequestCredentials(authorization: "Bearer \(plain)")).get()
        #expect(bob.actor == "bob")
    }

    /// A token verified once is served from the cache of verified tokens, which still applies its time
    /// claims: it is refused once it expires, with the same message as an uncached one.
    @Test func aCachedTokenStillExpires() async throws {
        let auth = try hs256(audiences: ["strata"])
        let token = try await TokenMaker.hs256(TestClaims(exp: ExpirationClaim(value: Date().addingTimeInterval(2)), aud: ["strata"]))
        for _ in 0..<3 { _ = try await auth.authenticate(RequestCredentials(authorization: "Bearer \(token)")).get() }
        // The same claims under another signature are another token: verified, and refused.
        let parts = token.split(separator: ".")
        let forged = "\(parts[0]).\(parts[1]).\(String(parts[2].reversed()))"
        #expect(try await refusal(auth, "Bearer \(forged)").contains("signature") )
        try await Task.sleep(for: .milliseconds(2600))
        #expect(try await refusal(auth, "Bearer \(token)").contains("expired"))
    }

    @Test func eachRefusalSaysWhich() async throws {
        let auth = try hs256(audiences: ["strata"])
        #expect(try await refusal(auth, nil).contains("no token"))
        #expect(try await refusal(auth, "Basic abc").contains("malformed authorization header"))
        #expect(try await refusal(auth, "Bearer not-a-jwt").contains("malformed token"))
        #expect(try await refusal(auth, "Bearer a.b.c").contains("malformed token"))
        let forged = try await TokenMaker.hs256(TestClaims(aud: ["strata"]), secret: "another secret, also long enough for HS256")
        #expect(try await refusal(auth, "Bearer \(forged)").contains("bad signature"))
        let expired = try await TokenMaker.hs256(TestClaims(exp: ExpirationClaim(value: Date().addingTimeInterval(-3600)), aud: ["strata"]))
        #expect(try await refusal(auth, "Bearer \(expired)").contains("expired"))
        let early = try await TokenMaker.hs256(TestClaims(nbf: NotBeforeClaim(value: Date().addingTimeInterval(3600)), aud: ["strata"]))
        #expect(try await refusal(auth, "Bearer \(early)").contains("not yet valid"))
        let elsewhere = try await TokenMaker.hs256(TestClaims(aud: ["someone-else"]))
        #expect(try await refusal(auth, "Bearer \(elsewhere)").contains("wrong audience"))
        let noAudience = try await TokenMaker.hs256(TestClaims())
        #expect(try await refusal(auth, "Bearer \(noAudience)").contains("wrong audience"))
        let unbounded = try await TokenMaker.hs256(TestClaims(exp: nil, aud: ["strata"]))
        #expect(try await refusal(auth, "Bearer \(unbounded)").contains("no exp"))
    }

    /// `alg: none` and an RS256 token are refused by an HS256 server whatever they claim.
    @Test func otherAlgorithmsAreRefused() async throws {
        let auth = try hs256()
        let payload = Data(#"{"sub":"mallory","exp":9999999999}"#.utf8).base64EncodedString()
        let unsigned = "eyJhbGciOiJub25lIn0.\(payload).".replacingOccurrences(of: "=", with: "")
        #expect(try await refusal(auth, "Bearer \(unsigned)").contains("accepts HS256 only"))
        let rsa = try await TokenMaker.rs256()
        #expect(try await refusal(auth, "Bearer \(rsa)").contains("accepts HS256 only"))
    }

    @Test func rs256SecretIsAPEMPublicKey() async throws {
        let jwt = JWTSettings(algorithm: .rs256, keys: .secret(TestKeys.firstPublicPEM))
        let auth = Authentication(settings: AuthorizationSettings(method: .jwt(jwt)), tokens: try JWTAuthenticator(settings: jwt))
        let token = try await TokenMaker.rs256(TestClaims(sub: "carol"))
        #expect(try await auth.authenticate(RequestCredentials(authorization: "Bearer \(token)")).get().subject == "carol")
        let other = try await TokenMaker.rs256(TestClaims(sub: "carol"), privatePEM: TestKeys.secondPrivatePEM)
        #expect(try await refusal(auth, "Bearer \(other)").contains("bad signature"))
        #expect(throws: StrataError.self) { try JWTAuthenticator(settings: JWTSettings(algorithm: .rs256, keys: .secret("not a key"))) }
    }

    /// Keys come from the JWK Set fetched when serving starts; a token naming a key id the set does not
    /// have makes one more fetch (the issuer rotated its keys), at most once per 30 seconds.
    @Test func jwksIsFetchedOnStartAndOnAnUnknownKeyIDRateLimited() async throws {
        let published = Mutex(TestKeys.jwks([("first", TestKeys.firstModulus)]))
        let fetches = Atomic<Int>(0)
        let keySet = JWKSKeySet(urls: ["http://127.0.0.1:9/jwks.json"], refresh: .seconds(3600)) { _ in
            fetches.add(1, ordering: .relaxed)
            return Data(published.withLock { $0 }.utf8)
        }
        let jwt = JWTSettings(algorithm: .rs256, keys: .jwks(urls: keySet.urls, refresh: keySet.refresh), audiences: ["strata"])
        let auth = Authentication(settings: AuthorizationSettings(method: .jwt(jwt)), tokens: try JWTAuthenticator(settings: jwt, keySet: keySet))
        #expect(fetches.load(ordering: .relaxed) == 0, "building the authenticator fetches nothing")

        await keySet.refetch()  // what `run` does first when serving starts
        let first = try await TokenMaker.rs256(TestClaims(sub: "dave", aud: ["strata"]), kid: "first")
        #expect(try await auth.authenticate(RequestCredentials(authorization: "Bearer \(first)")).get().subject == "dave")
        #expect(fetches.load(ordering: .relaxed) == 1)

        // The issuer rotates to a second key: a token signed with it is accepted after one more fetch,
        // even though the last fetch was moments ago (the start-up fetch does not count against the
        // rate limit of unknown key ids).
        published.withLock { $0 = TestKeys.jwks([("first", TestKeys.firstModulus), ("second", TestKeys.secondModulus)]) }
        let second = try await TokenMaker.rs256(TestClaims(sub: "erin", aud: ["strata"]), privatePEM: TestKeys.secondPrivatePEM, kid: "second")
        #expect(try await auth.authenticate(RequestCredentials(authorization: "Bearer \(second)")).get().subject == "erin")
        #expect(fetches.load(ordering: .relaxed) == 2)
        // Made-up key ids do not make a fetch each.
        let bogus = try await TokenMaker.rs256(TestClaims(aud: ["strata"]), kid: "made-up")
        for _ in 0..<5 {
            let message = try await refusal(auth, "Bearer \(bogus)")
            #expect(message.contains("unknown key id \"made-up\""), "\(message)")
        }
        #expect(fetches.load(ordering: .relaxed) == 2, "\(fetches.load(ordering: .relaxed)) fetches")
    }

    /// One of two JWKS URLs failing costs only its own keys, and only until it answered once: later
    /// failures (down, or answering something that is not a JWK Set) keep its last good keys.
    @Test func aFailingJWKSURLKeepsItsLastKeysAndLosesNoOthers() async throws {
        struct Down: Error {}
        let answers = Mutex<[String: String?]>([
            "http://a/jwks": TestKeys.jwks([("first", TestKeys.firstModulus)]),
            "http://b/jwks": nil,
        ])
        let keySet = JWKSKeySet(urls: ["http://a/jwks", "http://b/jwks"], refresh: .seconds(3600)) { url in
            guard let answer = answers.withLock({ $0[url] ?? nil }) else { throw Down() }
            return Data(answer.utf8)
        }
        let jwt = JWTSettings(algorithm: .rs256, keys: .jwks(urls: keySet.urls, refresh: keySet.refresh), audiences: ["strata"])
        let auth = Authentication(settings: AuthorizationSettings(method: .jwt(jwt)), tokens: try JWTAuthenticator(settings: jwt, keySet: keySet))
        let first = try await TokenMaker.rs256(TestClaims(sub: "a", aud: ["strata"]), kid: "first")
        let second = try await TokenMaker.rs256(TestClaims(sub: "b", aud: ["strata"]), privatePEM: TestKeys.secondPrivatePEM, kid: "second")

        await keySet.refetch()
        #expect(try await auth.authenticate(RequestCredentials(authorization: "Bearer \(first)")).get().subject == "a")

        answers.withLock { $0["http://b/jwks"] = TestKeys.jwks([("second", TestKeys.secondModulus)]) }
        await keySet.refetch()
        #expect(try await auth.authenticate(RequestCredentials(authorization: "Bearer \(second)")).get().subject == "b")

        answers.withLock {
            $0["http://a/jwks"] = "<html>maintenance</html>"
            $0["http://b/jwks"] = nil
        }
        await keySet.refetch()
        #expect(try await auth.authenticate(RequestCredentials(authorization: "Bearer \(first)")).get().subject == "a")
        #expect(try await auth.authenticate(RequestCredentials(authorization: "Bearer \(second)")).get().subject == "b")
    }
}
