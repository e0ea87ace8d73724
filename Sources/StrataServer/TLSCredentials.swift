import Foundation
import GRPCNIOTransportHTTP2
import Logging
import NIOCertificateReloading
import NIOSSL
import StrataCore
import X509

/// TLS on one listening address: BuildGrid's `!channel` `credentials` (`tls-server-key`,
/// `tls-server-cert`, `tls-client-certs`), PEM files all.
///
/// With `clientCertificateAuthoritiesPath` the channel is mutual TLS: a client must present a
/// certificate that chains to one of those CAs, or its handshake fails. The files are read when the
/// server starts (never while a configuration loads); the key and certificate are read again every
/// `reloadInterval`, so a renewed certificate replaced on disk is served to new connections without a
/// restart (a pair that does not load, or whose key does not match, is refused and the last good one
/// stays). The CA file is read once, at start.
public struct TLSCredentials: Sendable, Hashable {
    public var serverKeyPath: String
    public var serverCertificatePath: String
    public var clientCertificateAuthoritiesPath: String?
    public var reloadInterval: Duration

    /// Reading two small files this often costs nothing measurable; a renewal is served within it.
    public static let defaultReloadInterval: Duration = .seconds(10)

    public init(
        serverKeyPath: String, serverCertificatePath: String, clientCertificateAuthoritiesPath: String? = nil,
        reloadInterval: Duration = Self.defaultReloadInterval
    ) {
        self.serverKeyPath = serverKeyPath
        self.serverCertificatePath = serverCertificatePath
        self.clientCertificateAuthoritiesPath = clientCertificateAuthoritiesPath
        self.reloadInterval = reloadInterval
    }

    public var isMutual: Bool { clientCertificateAuthoritiesPath != nil }

    /// Reads and checks every file as serving would, changing nothing: `strata config check` says
    /// here whether `serve` would start. The error names the option, the file and what is wrong.
    public func check() throws(StrataError) {
        _ = try serverCertificateChain()
        _ = try clientCertificateAuthorities()
    }

    /// The transport's TLS settings and the reloader that keeps its certificate current (the server
    /// runs it while it serves). Reads the files now: a missing or bad one is an error naming it.
    func transportSecurity(for address: ListenAddress, logger: Logger) throws(StrataError)
        -> (security: HTTP2ServerTransport.Posix.TransportSecurity, reloader: TimedCertificateReloader)
    {
        let authorities = try clientCertificateAuthorities()
        let reloader = try certificateReloader(for: "\(address)", logger: logger)
        do {
            guard let authorities else { return (try .tls(certificateReloader: reloader), reloader) }
            let roots = try authorities.map { certificate throws in
                TLSConfig.CertificateSource.bytes(try certificate.serializeAsPEM().derBytes, format: .der)
            }
            let clientAuthorities = ClientCertificateAuthorities(
                path: clientCertificateAuthoritiesPath ?? "", authorities: authorities, logger: logger)
            let security = try HTTP2ServerTransport.Posix.TransportSecurity.mTLS(certificateReloader: reloader) { tls in
                // Client certificates are verified against these CAs only, never the system's: the
                // file's, read again when it changes (ClientCertificateAuthorities). The trust roots
                // given here only name the acceptable CAs in the handshake.
                tls.trustRoots = .certificates(roots)
                tls.clientCertificateVerification = .noHostnameVerification
                tls.customVerificationCallback = { certificates, promise in clientAuthorities.verify(certificates, promise) }
            }
            return (security, reloader)
        } catch {
            throw .invalidArgument("\(address): cannot set up TLS: \(error)")
        }
    }

    /// The reloader that reads the key and certificate again every `reloadInterval` (run it while
    /// serving; a changed pair is logged, a failed read is a rate-limited warning and the previous pair
    /// stays). Reads the files now: a missing or bad one is an error naming it. `address` names the
    /// listener in the log lines.
    public func certificateReloader(for address: String, logger: Logger) throws(StrataError) -> TimedCertificateReloader {
        let chain = try serverCertificateChain()
        let mutual = clientCertificateAuthoritiesPath.map { ", client certificates required from the CAs in \($0)" } ?? ""
        logger.info("\(address): TLS with \(serverCertificatePath) (subject \(chain[0].subject), valid until \(chain[0].notValidAfter))\(mutual)")
        let failures = WarningRateLimit()
        let configuration = TimedCertificateReloader.Configuration(
            refreshInterval: reloadInterval,
            certificateSource: .init(location: .file(path: serverCertificatePath), format: .pem),
            privateKeySource: .init(location: .file(path: serverKeyPath), format: .pem)
        ) { [serverCertificatePath, serverKeyPath] configuration in
            // Called after every read, changed or not: only a new certificate is news.
            configuration.onCertificateLoaded = { diff in
                guard let previous = diff.previousX509CertificateChain, previous != diff.currentX509CertificateChain,
                      let leaf = diff.currentX509CertificateChain.first else { return }
                logger.info("\(address): serving the TLS certificate \(serverCertificatePath) read again: subject \(leaf.subject), valid until \(leaf.notValidAfter)")
            }
            configuration.onCertificateLoadFailed = { failure in
                guard let heldBack = failures.admit() else { return }
                let again = heldBack > 0 ? " (\(heldBack) more failed reads since the last warning)" : ""
                logger.warning("\(address): cannot read the TLS certificate \(serverCertificatePath) and key \(serverKeyPath) again, still serving the previous pair: \(failure.error)\(again)")
            }
        }
        do {
            return try TimedCertificateReloader.makeReloaderValidatingSources(configuration: configuration)
        } catch {
            throw .invalidArgument("tls-server-key \"\(serverKeyPath)\" and tls-server-cert \"\(serverCertificatePath)\": \(error)")
        }
    }

    /// The server's certificate chain, checked against its key.
    private func serverCertificateChain() throws(StrataError) -> [Certificate] {
        let chain = try Self.certificates(option: "tls-server-cert", path: serverCertificatePath)
        let keyText = try Self.readText(option: "tls-server-key", path: serverKeyPath)
        let key: Certificate.PrivateKey
        do {
            key = try Certificate.PrivateKey(pemEncoded: keyText)
        } catch {
            throw .invalidArgument("tls-server-key \"\(serverKeyPath)\" is not a PEM private key (RSA, EC or Ed25519): \(error)")
        }
        guard key.publicKey == chain[0].publicKey else {
            throw .invalidArgument("tls-server-key \"\(serverKeyPath)\" is not the key of tls-server-cert \"\(serverCertificatePath)\" (\(chain[0].subject))")
        }
        return chain
    }

    private func clientCertificateAuthorities() throws(StrataError) -> [Certificate]? {
        guard let path = clientCertificateAuthoritiesPath else { return nil }
        return try Self.certificates(option: "tls-client-certs", path: path)
    }

    static func certificates(option: String, path: String) throws(StrataError) -> [Certificate] {
        let text = try readText(option: option, path: path)
        let certificates: [Certificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMBytes(Array(text.utf8)).map { certificate throws in
                try Certificate(derEncoded: certificate.toDERBytes())
            }
        } catch {
            throw .invalidArgument("\(option) \"\(path)\" is not PEM certificates: \(error)")
        }
        guard !certificates.isEmpty else { throw .invalidArgument("\(option) \"\(path)\" holds no PEM certificate") }
        return certificates
    }

    private static func readText(option: String, path: String) throws(StrataError) -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            throw .invalidArgument("\(option) \"\(path)\" does not exist")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .invalidArgument("\(option) \"\(path)\" cannot be read (permissions?)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw .invalidArgument("\(option) \"\(path)\" is not PEM text")
        }
        return text
    }
}
