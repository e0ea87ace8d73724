import Crypto
import Foundation
import StrataAuth
import StrataCore
@testable import StrataServer
import Testing
import X509

/// Mutual TLS without JWT: the verified client certificate's subject, as an RFC 4514 string, is the
/// actor the ACL matches.
@Suite struct ClientCertificateTests {
    func certificate(subject: DistinguishedName) throws -> Certificate {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(3600),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: Certificate.Extensions(), issuerPrivateKey: .init(key))
    }

    @Test func subjectIsTheActorTheACLSees() async throws {
        let subject = try DistinguishedName {
            OrganizationName("Example")
            CommonName("builder-7")
        }
        let text = RequestContextInterceptor.subject(of: try certificate(subject: subject))
        #expect(text == "CN=builder-7,O=Example")

        let acl = AccessControlList(rules: ["": .entries([.init(actor: try .init("CN=builder-[0-9]+,O=Example"), requests: ["Read"])])])
        let auth = Authentication(settings: AuthorizationSettings(method: .none, accessControl: acl), tokens: nil)
        let principal = try await auth.authenticate(RequestCredentials(clientCertificateSubject: text)).get()
        #expect(principal.source == .clientCertificate && principal.actor == "CN=builder-7,O=Example")
        #expect(acl.allows(principal, instance: "", method: "Read"))
        #expect(!acl.allows(principal, instance: "", method: "Write"))

        guard case .failure(let error) = await auth.authenticate(RequestCredentials()) else { Issue.record("accepted"); return }
        #expect(error.code == .unauthenticated && error.message.contains("no client certificate"))
    }
}
