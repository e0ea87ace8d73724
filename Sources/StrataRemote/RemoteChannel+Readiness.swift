import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataCore

typealias CapabilitiesClient = Build_Bazel_Remote_Execution_V2_Capabilities.Client<HTTP2ClientTransport.Posix>

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
