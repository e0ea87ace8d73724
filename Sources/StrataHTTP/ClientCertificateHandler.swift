import Hummingbird
import NIOCore
import NIOHTTPTypes
import NIOSSL
import X509

/// Hands a mutual-TLS connection's verified client certificate to the request handlers: each request
/// head gets its subject (RFC 4514, as the gRPC side writes it) in `HTTPListener.verifiedClientCertificateHeader`.
/// A client's own value of that header is always removed, on every listener, so only this handler
/// can set it.
final class ClientCertificateHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    /// The subject, once looked up (the handshake is over before the first request arrives).
    private var subject: String??

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        head.headerFields[HTTPListener.verifiedClientCertificateHeader] = nil
        if subject == nil { subject = .some(Self.peerSubject(context)) }
        if let subject = subject ?? nil { head.headerFields[HTTPListener.verifiedClientCertificateHeader] = subject }
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }

    private static func peerSubject(_ context: ChannelHandlerContext) -> String? {
        guard let tls = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
              let peer = tls.peerCertificate, let der = try? peer.toDERBytes(),
              let certificate = try? Certificate(derEncoded: der) else { return nil }
        return String(describing: certificate.subject)
    }
}
