import NIOSSL
import StrataCore
import StrataServer

extension HTTPCache {
    /// NIOSSL's server settings for an `!http-channel`'s `credentials`, with the files checked as
    /// `!channel`'s are (`TLSCredentials.check`): an error names the option and the file.
    public static func tlsConfiguration(_ credentials: TLSCredentials) throws(StrataError) -> TLSConfiguration {
        try credentials.check()
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(credentials.serverCertificatePath).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: credentials.serverKeyPath, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
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
}
