import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataCore
import StrataProto
import SwiftProtobuf
import X509

/// Sets `RequestContext.current` for the whole RPC: the handler and the producer of its streamed
/// response (which runs after the handler returns). The first interceptor, so every one after it
/// (authentication, limits, metrics, access logs) and every layer below reads the same context.
struct RequestContextInterceptor: ServerInterceptor {
    static let requestMetadataKey = "build.bazel.remote.execution.v2.requestmetadata-bin"
    /// The server's, shared by every RPC's context.
    let shutdown: ServerShutdown

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let requestContext = RequestContext(
            service: context.descriptor.service.fullyQualifiedService, method: context.descriptor.method,
            peer: context.remotePeer, metadata: Self.clientMetadata(request.metadata), serverShutdown: shutdown)
        // Only a mutual-TLS channel asks for a client certificate, and its handshake verified this one.
        if let certificate = (context.transportSpecific as? HTTP2ServerTransport.Posix.Context)?.peerCertificate {
            requestContext.setPrincipal(Principal(source: .clientCertificate, actor: Self.subject(of: certificate)))
        }
        var response = try await RequestContext.$current.withValue(requestContext) {
            try await next(request, context)
        }
        response.wrapProducer { producer in
            { writer in try await RequestContext.$current.withValue(requestContext) { try await producer(writer) } }
        }
        return response
    }

    /// The certificate's subject as an RFC 4514 string (most specific attribute first), e.g.
    /// `CN=builder-7,O=Example`: the actor an ACL's patterns match.
    static func subject(of certificate: Certificate) -> String {
        String(describing: certificate.subject)
    }

    /// The client's RequestMetadata header, decoded; empty when absent or not a RequestMetadata (a
    /// malformed header describes the client, it does not make the request invalid).
    static func clientMetadata(_ metadata: Metadata) -> ClientRequestMetadata {
        guard let bytes = metadata[binaryValues: requestMetadataKey].first(where: { _ in true }),
              let message = try? Build_Bazel_Remote_Execution_V2_RequestMetadata(serializedBytes: bytes)
        else { return ClientRequestMetadata() }
        return ClientRequestMetadata(message)
    }
}
