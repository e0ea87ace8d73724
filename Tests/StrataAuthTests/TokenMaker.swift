import Foundation
import JWTKit

/// Claims a test token carries; nil fields are left out.
struct TestClaims: JWTPayload {
    var exp: ExpirationClaim? = ExpirationClaim(value: Date().addingTimeInterval(3600))
    var nbf: NotBeforeClaim?
    var sub: String? = "alice"
    var act: String?
    var aud: [String]?

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Signs test tokens with jwt-kit (a library Strata uses, but the signing side of it, which Strata does not).
enum TokenMaker {
    static func hs256(_ claims: TestClaims = TestClaims(), secret: String = "correct horse battery staple, 32 bytes or more") async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }

    static func rs256(_ claims: TestClaims = TestClaims(), privatePEM: String = TestKeys.firstPrivatePEM, kid: String? = nil) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(rsa: try Insecure.RSA.PrivateKey(pem: privatePEM), digestAlgorithm: .sha256)
        return try await keys.sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }
}
