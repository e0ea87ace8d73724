import StrataAuth
import StrataCore
import Testing

@Suite struct AccessPolicyTests {
    func pattern(_ source: String) -> AccessControlList.Pattern { try! AccessControlList.Pattern(source) }

    var readOnlyACL: AccessControlList {
        AccessControlList(rules: [
            "main": .entries([
                AccessControlList.Entry(actor: pattern("ci-.*"), requests: ["FindMissingBlobs", "BatchReadBlobs", "Read", "GetActionResult", "GetCapabilities"]),
                AccessControlList.Entry(actor: pattern("release"), workflow: pattern("strata")),
            ]),
            "open": .all,
        ])
    }

    func context(_ principal: Principal = .anonymous, method: String, peer: String = "ipv4:10.0.0.7:5000", failure: String? = nil) -> RequestContext {
        let context = RequestContext(service: "build.bazel.remote.execution.v2.ActionCache", method: method, peer: peer, principal: principal)
        if let failure { context.setAuthenticationFailure(failure) }
        return context
    }

    @Test func entriesMatchWholeClaimsAndRequestNames() {
        let acl = readOnlyACL
        let ci = Principal(source: .jwt, actor: "ci-linux", subject: "ci-linux", workflow: "strata")
        #expect(acl.allows(ci, instance: "main", method: "GetActionResult"))
        #expect(!acl.allows(ci, instance: "main", method: "UpdateActionResult"))
        // Whole-string matches: "release" does not admit "release-bot", nor "ci-.*" "not-ci-x".
        #expect(acl.allows(Principal(source: .jwt, actor: "release", workflow: "strata"), instance: "main", method: "Write"))
        #expect(!acl.allows(Principal(source: .jwt, actor: "release-bot", workflow: "strata"), instance: "main", method: "Write"))
        #expect(!acl.allows(Principal(source: .jwt, actor: "not-ci-x"), instance: "main", method: "Read"))
        // A pattern against a missing claim sees the empty string.
        #expect(!acl.allows(Principal(source: .jwt, actor: "release"), instance: "main", method: "Write"))
        #expect(acl.allows(.anonymous, instance: "open", method: "Write"))
        // An instance the ACL does not name allows nothing.
        #expect(!acl.allows(ci, instance: "other", method: "GetActionResult"))
    }

    @Test func permissionDeniedNamesTheRequestAndTheInstance() {
        let policy = AccessPolicy(settings: AuthorizationSettings(method: .headers, accessControl: readOnlyACL))
        let ci = Principal(source: .jwt, actor: "ci-linux")
        #expect(throws: Never.self) { try policy.authorize(context(ci, method: "Read"), instance: "main", method: "Read") }
        do {
            try policy.authorize(context(ci, method: "UpdateActionResult"), instance: "main", method: "UpdateActionResult")
            Issue.record("allowed")
        } catch {
            #expect(error.code == .permissionDenied)
            #expect(error.message.contains("UpdateActionResult") && error.message.contains("\"main\""), "\(error.message)")
        }
        #expect(!policy.permits(context(ci, method: "GetCapabilities"), instance: "main", method: "UpdateActionResult"))
        #expect(policy.permits(context(ci, method: "GetCapabilities"), instance: "open", method: "UpdateActionResult"))
    }

    @Test func unauthenticatedRequestsAreRefusedUnlessTheInstanceOrLoopbackIsAllowed() {
        let settings = AuthorizationSettings(
            method: .headers, accessControl: readOnlyACL, allowUnauthenticatedInstances: ["open"])
        let policy = AccessPolicy(settings: settings)
        let bad = context(method: "Read", failure: "expired token: its exp is 2020-01-01T00:00:00Z")
        do {
            try policy.authorize(bad, instance: "main", method: "Read")
            Issue.record("allowed")
        } catch {
            #expect(error.code == .unauthenticated)
            #expect(error.message.contains("expired token"), "\(error.message)")
        }
        #expect(throws: Never.self) { try policy.authorize(bad, instance: "open", method: "Read") }

        var local = settings
        local.allowLocalhostRequests = true
        let loopback = context(method: "Read", peer: "ipv4:127.0.0.1:40000")
        // Loopback passes authentication, and the ACL still applies (to an empty identity).
        #expect(throws: Never.self) { try AccessPolicy(settings: local).authorize(loopback, instance: "open", method: "Read") }
        do {
            try AccessPolicy(settings: local).authorize(loopback, instance: "main", method: "Read")
            Issue.record("allowed")
        } catch {
            #expect(error.code == .permissionDenied)
        }
        // Without an ACL every authenticated request passes.
        let open = AccessPolicy(settings: AuthorizationSettings(method: .headers))
        #expect(throws: Never.self) { try open.authorize(context(Principal(source: .headers, actor: "x"), method: "Write"), instance: "any", method: "Write") }
    }

    @Test func headersMethodReadsBuildGridsHeaders() async throws {
        let auth = Authentication(settings: AuthorizationSettings(method: .headers), tokens: nil)
        let principal = try await auth.authenticate(RequestCredentials(actorHeader: "bot", subjectHeader: "alice", workflowHeader: "nightly")).get()
        #expect(principal == Principal(source: .headers, actor: "bot", subject: "alice", workflow: "nightly"))
        guard case .failure(let error) = await auth.authenticate(RequestCredentials()) else { Issue.record("accepted"); return }
        #expect(error.code == .unauthenticated && error.message.contains("x-request-actor"))
    }
}
