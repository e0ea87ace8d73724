import StrataCore

/// Decides, where the instance of a request becomes known (`InstanceRegistry.instance`), whether the
/// request may go on: UNAUTHENTICATED when it needed credentials it did not bring (saying what was
/// wrong with them), PERMISSION_DENIED when the ACL does not allow the caller this request on this
/// instance.
public struct AccessPolicy: Sendable {
    public let settings: AuthorizationSettings

    public init(settings: AuthorizationSettings) { self.settings = settings }

    /// Throws unless the request of `context` may call `method` on `instance`.
    public func authorize(_ context: RequestContext, instance: String, method: String) throws(StrataError) {
        let principal = try effectivePrincipal(context, instance: instance)
        guard settings.accessControl?.allows(principal, instance: instance, method: method) ?? true else {
            throw .permissionDenied(
                "\(principal) may not call \(method) on instance \"\(StrataError.echo(instance))\" (acl-config)")
        }
    }

    /// Whether `authorize` would let the request of `context` call `method` on `instance`
    /// (Capabilities' `update_enabled`).
    public func permits(_ context: RequestContext, instance: String, method: String) -> Bool {
        (try? authorize(context, instance: instance, method: method)) != nil
    }

    /// The principal the ACL judges: the authenticated one; for a request without valid credentials,
    /// an anonymous (or localhost) one where that is allowed, else UNAUTHENTICATED.
    private func effectivePrincipal(_ context: RequestContext, instance: String) throws(StrataError) -> Principal {
        let principal = context.principal
        guard principal.source == .anonymous else { return principal }
        if settings.allowLocalhostRequests && context.isFromLoopback { return Principal(source: .localhost) }
        if settings.allowUnauthenticatedInstances.contains(instance) { return principal }
        let reason = context.authenticationFailure ?? "the request carries no credentials"
        throw .unauthenticated("\(reason); instance \"\(StrataError.echo(instance))\" needs an authenticated caller")
    }
}
