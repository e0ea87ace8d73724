import Foundation
import Logging
import NIOCore
import NIOSSL
import StrataCore
import Synchronization
import X509

/// The CAs a mutual-TLS channel accepts client certificates from (`tls-client-certs`), read again
/// whenever the file changes, and the verification of a client's chain against them.
///
/// The TLS library reads its trust roots once, when the server starts; a rotated client CA bundle
/// would then need a restart. So the handshake's verification is done here instead (gRPC's custom
/// verification callback): each new connection compares the file's modification time, size and inode
/// with the last read (one `stat`), reads it again when they changed, and verifies the chain with
/// swift-certificates' RFC 5280 verifier against the CAs it holds. A file that fails to read or parse
/// keeps the previous CAs, with a rate-limited warning.
final class ClientCertificateAuthorities: Sendable {
    let path: String
    private let logger: Logger
    private struct Loaded {
        var identity: FileIdentity
        var roots: CertificateStore
    }
    private let state: Mutex<Loaded>
    private let failures = WarningRateLimit()

    /// What tells a rewritten file from the one read: a replaced file (rename) has another inode, an
    /// edited one another modification time or size.
    private struct FileIdentity: Equatable {
        var inode: UInt64
        var modified: Int64
        var modifiedNanoseconds: Int
        var size: Int64

        init(inode: UInt64, modified: Int64, modifiedNanoseconds: Int, size: Int64) {
            self.inode = inode
            self.modified = modified
            self.modifiedNanoseconds = modifiedNanoseconds
            self.size = size
        }

        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            inode = UInt64(info.st_ino)
            modified = Int64(info.st_mtim.tv_sec)
            modifiedNanoseconds = info.st_mtim.tv_nsec
            size = Int64(info.st_size)
        }
    }

    /// `authorities`: the CAs the file held when the server started (already read and checked).
    init(path: String, authorities: [Certificate], logger: Logger) {
        self.path = path
        self.logger = logger
        let identity = FileIdentity(path: path) ?? FileIdentity(inode: 0, modified: 0, modifiedNanoseconds: 0, size: -1)
        state = Mutex(Loaded(identity: identity, roots: CertificateStore(authorities)))
    }

    /// The CAs to verify a new connection's certificate against: the file's, read again if it changed.
    func current() -> CertificateStore {
        guard let identity = FileIdentity(path: path) else {
            warn("cannot stat it")
            return state.withLock { $0.roots }
        }
        if let unchanged = state.withLock({ $0.identity == identity ? $0.roots : nil }) { return unchanged }
        do throws(StrataError) {
            let authorities = try TLSCredentials.certificates(option: "tls-client-certs", path: path)
            let roots = CertificateStore(authorities)
            state.withLock { $0 = Loaded(identity: identity, roots: roots) }
            logger.info("tls-client-certs \(path) read again: client certificates are now accepted from \(authorities.map { "\($0.subject)" }.joined(separator: "; "))")
            return roots
        } catch {
            warn(error.message)
            return state.withLock { $0.roots }
        }
    }

    private func warn(_ why: String) {
        guard let heldBack = failures.admit() else { return }
        let again = heldBack > 0 ? " (\(heldBack) more failed reads since the last warning)" : ""
        logger.warning("cannot read tls-client-certs \(path) again, still accepting the CAs read before: \(why)\(again)")
    }

    /// Verifies the chain a client presented (its certificate first) against the current CAs, for the
    /// transport's custom verification callback; the validated chain is what the connection records.
    func verify(_ presented: [NIOSSLCertificate], _ promise: EventLoopPromise<NIOSSLVerificationResultWithMetadata>) {
        let roots = current()
        guard let first = presented.first, let leaf = try? Certificate(derEncoded: first.toDERBytes()) else {
            promise.succeed(.failed)
            return
        }
        let intermediates = CertificateStore(presented.dropFirst().compactMap { try? Certificate(derEncoded: $0.toDERBytes()) })
        promise.completeWithTask {
            var verifier = Verifier(rootCertificates: roots) { RFC5280Policy(validationTime: Date()) }
            guard case .validCertificate(let chain) = await verifier.validate(leaf: leaf, intermediates: intermediates) else {
                return .failed
            }
            let validated = try chain.map { certificate in
                try NIOSSLCertificate(bytes: try certificate.serializeAsPEM().derBytes, format: .der)
            }
            return .certificateVerified(VerificationMetadata(ValidatedCertificateChain(validated)))
        }
    }
}
