import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataCore


extension RemoteChannel: ReadinessCheckable {
    /// GetCapabilities for the configured instance: the cheapest call every REAPI server answers, and
    /// the one that says whether it knows the instance.
    public func checkReadiness() async throws {
        _ = try await call("GetCapabilities") { client in
            try await CapabilitiesClient(wrapping: client).getCapabilities(
                .with { $0.instanceName = self.options.instanceName }, options: self.callOptions)
        }
    }
}
