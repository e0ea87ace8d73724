import Foundation
import StrataAuth
import StrataConfig
import StrataCore
import Testing

@Suite struct AuthorizationConfigTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-auth-config-\(UUID().uuidString)").path

    init() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        try "  a shared secret of at least thirty-two bytes\n".write(toFile: "\(scratch)/secret", atomically: true, encoding: .utf8)
        try """
        main:
          allow:
            - actor: ci-.*
              requests: [FindMissingBlobs, GetActionResult]
            - subject: release
        open:
          allow: all
        """.write(toFile: "\(scratch)/acl.yml", atomically: true, encoding: .utf8)
    }

    func yaml(_ authorization: String) -> String {
        """
        server:
          - !channel
            address: 127.0.0.1:0
            insecure-mode: true
        storages:
          - !lru-storage &cas
            size: 1M
        instances:
          - name: main
            services:
              - !cas
                storage: *cas
          - name: open
            services:
              - !cas
                storage: *cas
        authorization:
        \(authorization)
        """
    }

    func parse(_ authorization: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml(authorization), file: "test.yml", environment: ["DIR": scratch])
    }

    func expectError(_ authorization: String, file: String = "test.yml", line: Int, _ fragment: String,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: file, line: line, [fragment], sourceLocation: sourceLocation) { try parse(authorization) }
    }

    @Test func jwtWithSecretAndACL() async throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configuration = try parse("""
          method: jwt
          secret: \(scratch)/secret
          algorithm: hs256
          acl-config: \(scratch)/acl.yml
          allow-unauthenticated-instances: [open]
          allow-localhost-requests: true
        """)
        let authentication = try #require(configuration.authentication)
        #expect(authentication.settings.allowUnauthenticatedInstances == ["open"])
        #expect(authentication.settings.allowLocalhostRequests)
        let acl = try #require(authentication.settings.accessControl)
        #expect(acl.allows(Principal(source: .jwt, actor: "ci-1"), instance: "main", method: "GetActionResult"))
        #expect(!acl.allows(Principal(source: .jwt, actor: "ci-1"), instance: "main", method: "Write"))
        #expect(configuration.registry.accessPolicy != nil)
        // The secret is the file's contents without surrounding whitespace (BuildGrid strips it).
        let token = try await TokenSigner.hs256(secret: "a shared secret of at least thirty-two bytes")
        #expect(try await authentication.authenticate(RequestCredentials(authorization: "Bearer \(token)")).get().subject == "alice")
    }

    @Test func jwksLoadsWithoutFetching() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configuration = try parse("""
          method: jwt
          jwks-url: [http://127.0.0.1:9/a.json, http://127.0.0.1:9/b.json]
          audience: strata
          jwks-fetch-minutes: 5
        """)
        let keySet = try #require(configuration.backgroundServices.compactMap { $0 as? JWKSKeySet }.first)
        #expect(keySet.urls.count == 2 && keySet.refresh == .seconds(300))
        #expect(keySet.keys == nil, "nothing is fetched while loading")
    }

    @Test func noneWithoutACLChecksNothing() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        #expect(try parse("  method: none").authentication == nil)
        #expect(try parse("  method: none").registry.accessPolicy == nil)
    }

    @Test func errorsPointAtTheLine() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        expectError("  method: ldap", line: 18, "unknown method \"ldap\"")
        expectError("  method: server\n  url: unix:///x", line: 19, "not supported")
        expectError("  method: jwt\n  algorithm: hs256", line: 18, "needs a secret")
        expectError("  method: jwt\n  secret: \(scratch)/missing\n  algorithm: hs256", line: 19, "cannot read the secret file")
        expectError("  method: jwt\n  secret: \(scratch)/secret\n  algorithm: rs256", line: 19, "PEM RSA public key")
        expectError("  method: jwt\n  secret: \(scratch)/secret", line: 18, "needs an algorithm")
        try "short".write(toFile: "\(scratch)/short", atomically: true, encoding: .utf8)
        expectError("  method: jwt\n  secret: \(scratch)/short\n  algorithm: hs256", line: 19, "at least 32")
        expectError("  method: jwt\n  jwks-url: http://127.0.0.1:9/k", line: 18, "needs an audience")
        expectError("  method: jwt\n  jwks-url: ftp://x\n  audience: a", line: 19, "not an http")
        expectError("  method: headers\n  secret: x", line: 19, "applies to method: jwt only")
        expectError("  method: headers\n  allow-localhost-requests: maybe", line: 19, "expected true or false")
    }

    @Test func aclErrorsPointIntoTheACLFile() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try "main:\n  allow:\n    - actor: \"ci-(\"\n".write(toFile: "\(scratch)/bad.yml", atomically: true, encoding: .utf8)
        expectError("  method: headers\n  acl-config: \(scratch)/bad.yml", file: "\(scratch)/bad.yml", line: 3, "not a regular expression")
        try "main:\n  allow: some\n".write(toFile: "\(scratch)/some.yml", atomically: true, encoding: .utf8)
        expectError("  method: headers\n  acl-config: \(scratch)/some.yml", file: "\(scratch)/some.yml", line: 2, "expected all")
        try "main:\n  allow:\n    - user: x\n".write(toFile: "\(scratch)/key.yml", atomically: true, encoding: .utf8)
        expectError("  method: headers\n  acl-config: \(scratch)/key.yml", file: "\(scratch)/key.yml", line: 3, "unknown option \"user\"")
    }
}
