import Foundation
import GRPCCore
import StrataAPI
import StrataCore
import StrataProto
import Synchronization

/// How a client proves who it is to a remote REAPI server and checks the server: TLS files (PEM) and
/// a bearer token, given as text or as a file. BuildGrid's `credentials` keys map onto it:
/// `tls-server-cert` → `tlsCAFile`, `tls-client-cert` / `tls-client-key`, `auth-token` → `tokenFile`.
public struct RemoteCredentials: Sendable, Equatable {
    /// The certificates that sign the server's certificate; nil trusts the system's roots.
    public var tlsCAFile: String?
    /// The client's certificate chain for mutual TLS, with `tlsClientKeyFile`.
    public var tlsClientCertFile: String?
    public var tlsClientKeyFile: String?
    /// A bearer token, sent as `authorization: Bearer TOKEN`.
    public var token: String?
    /// A file holding the bearer token, read again whenever it changes (a rotated token is used from
    /// the next call on).
    public var tokenFile: String?

    public init(tlsCAFile: String? = nil, tlsClientCertFile: String? = nil, tlsClientKeyFile: String? = nil,
                token: String? = nil, tokenFile: String? = nil) {
        self.tlsCAFile = tlsCAFile
        self.tlsClientCertFile = tlsClientCertFile
        self.tlsClientKeyFile = tlsClientKeyFile
        self.token = token
        self.tokenFile = tokenFile
    }

    public var hasTLSFiles: Bool { tlsCAFile != nil || tlsClientCertFile != nil || tlsClientKeyFile != nil }

    /// Checks what can be checked without connecting: the files are readable, a client certificate
    /// comes with its key, one token source at most.
    func validate() throws(StrataError) {
        if (tlsClientCertFile == nil) != (tlsClientKeyFile == nil) {
            throw .invalidArgument("a TLS client certificate needs its private key and the key its certificate (mutual TLS needs both)")
        }
        if token != nil && tokenFile != nil { throw .invalidArgument("give a token or a token file, not both") }
        let files: [(String, String?)] = [
            ("TLS CA certificate", tlsCAFile), ("TLS client certificate", tlsClientCertFile),
            ("TLS client key", tlsClientKeyFile), ("token file", tokenFile),
        ]
        for case let (what, path?) in files where !FileManager.default.isReadableFile(atPath: path) {
            throw .invalidArgument("\(what) \(path) cannot be read")
        }
        if let token, token.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { throw .invalidArgument("the token is empty") }
    }
}

/// The bearer token of every call: fixed text, or a file's content read again when the file changes
/// (its modification time, size or inode), so a token renewed on disk is picked up without a restart.
final class BearerToken: Sendable {
    private enum Source { case text(String), file(String) }
    private struct Cached { var stamp: [Int]; var token: String }
    private let source: Source
    private let cached = Mutex<Cached?>(nil)

    init?(_ credentials: RemoteCredentials) {
        if let token = credentials.token {
            source = .text(token.trimmingCharacters(in: .whitespacesAndNewlines))
        } else if let path = credentials.tokenFile {
            source = .file(path)
        } else {
            return nil
        }
    }

    /// The token to send now; UNAUTHENTICATED when its file cannot be read or is empty.
    func current() throws(RPCError) -> String {
        switch source {
        case .text(let token): return token
        case .file(let path):
            var info = stat()
            guard stat(path, &info) == 0 else {
                throw RPCError(code: .unauthenticated, message: "token file \(path) cannot be read: \(String(cString: strerror(errno)))")
            }
            let stamp = [Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec), Int(info.st_size), Int(info.st_ino)]
            if let cached = cached.withLock({ $0 }), cached.stamp == stamp { return cached.token }
            guard let data = FileManager.default.contents(atPath: path) else {
                throw RPCError(code: .unauthenticated, message: "token file \(path) cannot be read")
            }
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !token.isEmpty else { throw RPCError(code: .unauthenticated, message: "token file \(path) is empty") }
            cached.withLock { $0 = Cached(stamp: stamp, token: token) }
            return token
        }
    }
}

/// Adds what every call to a remote server carries: the bearer token, and the RequestMetadata of the
/// request being served (`RequestContext.current`) so the remote's logs name the build that caused
/// the call; outside a request (a client command) the channel's own RequestMetadata.
struct RemoteCallHeadersInterceptor: ClientInterceptor {
    static let requestMetadataKey = "build.bazel.remote.execution.v2.requestmetadata-bin"

    let token: BearerToken?
    let ownMetadata: ClientRequestMetadata?

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingClientRequest<Input>,
        context: ClientContext,
        next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
    ) async throws -> StreamingClientResponse<Output> {
        var request = request
        if let token { request.metadata.replaceOrAddString("Bearer \(try token.current())", forKey: "authorization") }
        if let metadata = RequestContext.current?.metadata ?? ownMetadata, !metadata.isEmpty,
           let bytes = try? metadata.proto.serializedBytes() as [UInt8] {
            request.metadata.replaceOrAddBinary(bytes, forKey: Self.requestMetadataKey)
        }
        return try await next(request, context)
    }

}
