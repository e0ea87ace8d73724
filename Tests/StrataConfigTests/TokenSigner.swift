import Foundation
import JWTKit

/// Signs an HS256 test token with jwt-kit.
enum TokenSigner {
    struct Claims: JWTPayload {
        var exp = ExpirationClaim(value: Date().addingTimeInterval(3600))
        var sub = "alice"
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    static func hs256(secret: String) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(Claims())
    }
}
