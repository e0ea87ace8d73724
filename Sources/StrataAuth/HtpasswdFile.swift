import Crypto
import Foundation
import HummingbirdBcrypt
import StrataCore
import Synchronization

/// `method: htpasswd`: the users of an Apache htpasswd file, checked against HTTP basic credentials
/// (`authorization: Basic base64(user:password)`), the way Bazel sends them for
/// `--remote_cache=http://user:pass@host` or `--remote_header=authorization=Basic …`.
///
/// Hashes: bcrypt (`$2y$`, `$2b$`, `$2a$`, as `htpasswd -B` writes them) and `{SHA}` (base64 of the
/// password's SHA-1, `htpasswd -s`). Other kinds (MD5 `$apr1$`, crypt, plain text) are refused when
/// the file is read, naming the line.
///
/// bcrypt is slow by design (tens of milliseconds per check at cost 10, and Bazel sends the header on
/// every request), so a verified user and password pair is remembered for `verifiedLifetime`: only its
/// HMAC-SHA-256 under a per-process key, never the password.
public final class HtpasswdFile: Sendable {
    enum Hash: Sendable, Equatable {
        case bcrypt(String)
        case sha1(Data)
    }

    /// Where the users came from, for messages.
    public let path: String
    let users: [String: Hash]
    private let verified: Mutex<[Data: ContinuousClock.Instant]> = Mutex([:])
    private let cacheKey = SymmetricKey(size: .bits256)
    /// How long a verified pair is believed without checking its hash again.
    public let verifiedLifetime: Duration
    /// At most this many remembered pairs: a flood of good passwords cannot grow memory.
    static let maxVerified = 10_000

    /// Parses the file's text; the error names the first bad line.
    public init(path: String, contents: String, verifiedLifetime: Duration = .seconds(60)) throws(StrataError) {
        self.path = path
        self.verifiedLifetime = verifiedLifetime
        var users: [String: Hash] = [:]
        for (index, rawLine) in contents.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
                throw .invalidArgument("\(path):\(index + 1): expected user:hash")
            }
            let user = String(line[..<colon])
            let hash = String(line[line.index(after: colon)...])
            guard users[user] == nil else { throw .invalidArgument("\(path):\(index + 1): user \"\(user)\" is given twice") }
            if hash.hasPrefix("$2y$") || hash.hasPrefix("$2b$") || hash.hasPrefix("$2a$") {
                guard hash.count == 60 else { throw .invalidArgument("\(path):\(index + 1): user \"\(user)\": a bcrypt hash has 60 characters") }
                users[user] = .bcrypt(hash)
            } else if hash.hasPrefix("{SHA}") {
                guard let digest = Data(base64Encoded: String(hash.dropFirst(5))), digest.count == Insecure.SHA1.byteCount else {
                    throw .invalidArgument("\(path):\(index + 1): user \"\(user)\": {SHA} needs the base64 of a 20-byte SHA-1")
                }
                users[user] = .sha1(digest)
            } else {
                throw .invalidArgument(
                    "\(path):\(index + 1): user \"\(user)\": unsupported hash; use bcrypt (htpasswd -B) or {SHA} (htpasswd -s)")
            }
        }
        guard !users.isEmpty else { throw .invalidArgument("\(path): the file names no user") }
        self.users = users
    }

    /// The principal of an `authorization: Basic …` header, or why it gives none.
    public func principal(basicAuthorization header: String) async -> Result<Principal, StrataError> {
        guard let decoded = Data(base64Encoded: String(header.drop(while: { $0 == " " }))),
              let text = String(data: decoded, encoding: .utf8), let colon = text.firstIndex(of: ":") else {
            return .failure(StrataError(.unauthenticated, "malformed authorization header: expected \"Basic base64(user:password)\""))
        }
        let user = String(text[..<colon])
        let password = String(text[text.index(after: colon)...])
        guard await verify(user: user, password: password) else {
            return .failure(StrataError(.unauthenticated, "wrong user or password for \"\(StrataError.echo(user))\" (htpasswd \(path))"))
        }
        return .success(Principal(source: .htpasswd, actor: user, subject: user))
    }

    /// Whether `password` is `user`'s.
    public func verify(user: String, password: String) async -> Bool {
        guard let hash = users[user] else { return false }
        let pairKey = Data(HMAC<SHA256>.authenticationCode(for: Data("\(user)\u{0}\(password)".utf8), using: cacheKey))
        let now = ContinuousClock.now
        if verified.withLock({ $0[pairKey].map { now < $0 } ?? false }) { return true }
        let good: Bool
        switch hash {
        case .bcrypt(let stored):
            // The C implementation knows $2a$ and $2b$; $2y$ (PHP's and htpasswd's name) is the same algorithm.
            let comparable = stored.hasPrefix("$2y$") ? "$2b$" + stored.dropFirst(4) : stored
            // Off the cooperative pool: one check takes tens of milliseconds of CPU.
            good = await withCheckedContinuation { continuation in
                DispatchQueue.global().async { continuation.resume(returning: Bcrypt.verify(password, hash: comparable)) }
            }
        case .sha1(let stored):
            good = Data(Insecure.SHA1.hash(data: Data(password.utf8))) == stored
        }
        guard good else { return false }
        verified.withLock { entries in
            if entries.count >= Self.maxVerified { entries = entries.filter { now < $0.value } }
            if entries.count >= Self.maxVerified { entries.removeAll() }
            entries[pairKey] = now + verifiedLifetime
        }
        return true
    }
}
