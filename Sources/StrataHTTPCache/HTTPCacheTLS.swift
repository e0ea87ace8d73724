import NIOCertificateReloading
import Logging
import NIOSSL
import StrataCore
import StrataServer

extension HTTPCache {
    /// NIOSSL's server settings for an `!http-channel`'s `credentials`, with the files checked as
    /// `!channel`'s are (`TLSCredentials.check`): an error names the option and the file. With
    /// `reloader` (`TLSCredentials.certificateReloader`, run while serving), each handshake takes the
    /// key and certificate it last read, so a renewed certificate is served without a restart.
    public static func tlsConfiguration(
        _ credentials: TLSCredentials, reloader: TimedCertificateReloader? = nil
    ) throws(StrataError) -> TLSConfiguration {
        try credentials.check()
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(credentials.serverCertificatePath).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: credentials.serverKeyPath, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
            if let reloader { configuration.setCertificateReloader(reloader) }
            if let authorities = credentials.clientCertificateAuthoritiesPath {
                // Mutual TLS: a client certificate is required and verified against these CAs only.
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(authorities))
                configuration.certificateVerification = .noHostnameVerification
            }
            return configuration
        } catch {
            throw .invalidArgument("tls-server-key \"\(credentials.serverKeyPath)\", tls-server-cert \"\(credentials.serverCertificatePath)\"\(credentials.clientCertificateAuthoritiesPath.map { " and tls-client-certs \"\($0)\"" } ?? ""): \(error)")
        }
    }

    /// What a serving `!http-channel` needs for TLS: the settings, and the reloader's run (for the
    /// listener to run while it serves) that keeps the key and certificate current as `!channel`'s.
    public static func servingTLS(
        _ credentials: TLSCredentials, address: String, logger: Logger
    ) throws(StrataError) -> (configuration: TLSConfiguration, reload: @Sendable () async -> Void) {
        let reloader = try credentials.certificateReloader(for: address, logger: logger)
        let configuration = try tlsConfiguration(credentials, reloader: reloader)
        // Ends only when cancelled; a failed read is logged by the reloader's callback.
        return (configuration, { try? await reloader.run() })
    }
}
