import Foundation

/// A validated content digest: lower-case hex hash of the function's length and a non-negative size.
///
/// Blobs are always keyed by hash *and* size: two digests with one hash and different sizes are
/// different keys, so a wrong size can never alias a stored blob.
public struct Digest: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let hash: String
    public let sizeBytes: Int64
    public let function: DigestFunction

    /// Validates `hash` and `sizeBytes` for `function`; INVALID_ARGUMENT says which part is wrong.
    public init(hash: String, sizeBytes: Int64, function: DigestFunction = .sha256) throws(StrataError) {
        guard sizeBytes >= 0 else {
            throw .invalidArgument("digest \(hash.prefix(128))/\(sizeBytes): size_bytes must not be negative")
        }
        let utf8 = hash.utf8
        guard utf8.count == function.hexLength else {
            throw .invalidArgument(
                "digest \(hash.prefix(128))/\(sizeBytes): a \(function) hash has \(function.hexLength) hex characters, this one has \(utf8.count)")
        }
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"): continue
            case UInt8(ascii: "A")...UInt8(ascii: "F"):
                throw .invalidArgument("digest \(hash)/\(sizeBytes): the hash must be lower-case hex")
            default:
                throw .invalidArgument("digest \(hash.prefix(128))/\(sizeBytes): the hash is not hex")
            }
        }
        self.hash = hash
        self.sizeBytes = sizeBytes
        self.function = function
    }

    private init(trusted hash: String, sizeBytes: Int64, function: DigestFunction) {
        self.hash = hash
        self.sizeBytes = sizeBytes
        self.function = function
    }

    /// The digest of the empty blob, which is always present and never stored.
    public static func empty(_ function: DigestFunction = .sha256) -> Digest {
        Digest(trusted: function.makeHasher().finalizeHex(), sizeBytes: 0, function: function)
    }

    public static let emptySHA256 = Digest.empty(.sha256)

    public var isEmpty: Bool { sizeBytes == 0 && function == .sha256 && hash == Digest.emptySHA256.hash }

    /// Computes the digest of `bytes`.
    public static func of(_ bytes: some DataProtocol, function: DigestFunction = .sha256) -> Digest {
        var hasher = function.makeHasher()
        hasher.update(bytes)
        return Digest(trusted: hasher.finalizeHex(), sizeBytes: Int64(bytes.count), function: function)
    }

    /// Checks that `data` is this blob; INVALID_ARGUMENT says whether the size or the hash differs.
    public func verify(_ data: some DataProtocol) throws(StrataError) {
        guard Int64(data.count) == sizeBytes else {
            throw .invalidArgument("blob \(self): received \(data.count) bytes, the digest says \(sizeBytes)")
        }
        var hasher = function.makeHasher()
        hasher.update(data)
        let actual = hasher.finalizeHex()
        guard actual == hash else {
            throw Self.hashMismatch(self, actual: actual)
        }
    }

    static func hashMismatch(_ digest: Digest, actual: String) -> StrataError {
        .invalidArgument("blob \(digest): the data's \(digest.function) hash is \(actual), not the digest's \(digest.hash)")
    }

    public var description: String { "\(hash)/\(sizeBytes)" }

    public static func < (lhs: Digest, rhs: Digest) -> Bool {
        (lhs.hash, lhs.sizeBytes) < (rhs.hash, rhs.sizeBytes)
    }
}
