import Foundation
import Crypto

/// The hash functions of REAPI's `DigestFunction.Value`, with the ones Strata can compute.
public enum DigestFunction: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case sha256 = 1
    case sha1 = 2
    case md5 = 3
    case vso = 4
    case sha384 = 5
    case sha512 = 6
    case murmur3 = 7
    case sha256tree = 8
    case blake3 = 9
    case gitsha1 = 10

    /// The functions this server computes and advertises.
    public static let supported: [DigestFunction] = [.sha256]

    /// Lower-case name, as used in ByteStream resource names and in messages.
    public var name: String {
        switch self {
        case .sha256: "sha256"
        case .sha1: "sha1"
        case .md5: "md5"
        case .vso: "vso"
        case .sha384: "sha384"
        case .sha512: "sha512"
        case .murmur3: "murmur3"
        case .sha256tree: "sha256tree"
        case .blake3: "blake3"
        case .gitsha1: "gitsha1"
        }
    }

    public var description: String { name.uppercased() }

    public init?(name: String) {
        guard let match = DigestFunction.allCases.first(where: { $0.name == name }) else { return nil }
        self = match
    }

    /// Length of the hash in hex characters.
    public var hexLength: Int {
        switch self {
        case .sha256, .sha256tree, .blake3: 64
        case .sha1, .gitsha1: 40
        case .md5: 32
        case .vso: 66
        case .sha384: 96
        case .sha512: 128
        case .murmur3: 32
        }
    }

    /// The spec allows inferring the function from the hash length only for these.
    static let inferable: [DigestFunction] = [.md5, .murmur3, .sha1, .sha256, .sha384, .sha512, .vso]

    /// Whether a ByteStream resource name omits the `digest_function/` segment for this function.
    public var isImplicitInResourceNames: Bool { DigestFunction.inferable.contains(self) }

    /// Resolves the function of a request: the explicit proto value, or (when 0, unset) inferred from the
    /// length of `hash`, as the spec allows. Throws INVALID_ARGUMENT for functions we do not compute.
    public static func resolve(protoValue: Int, hash: String?) throws(StrataError) -> DigestFunction {
        try resolve(protoValue: protoValue, hashLength: hash?.utf8.count)
    }

    /// `resolve(protoValue:hash:)` given only the hash's length in bytes, which is all it looks at.
    public static func resolve(protoValue: Int, hashLength: Int?) throws(StrataError) -> DigestFunction {
        if protoValue != 0 {
            guard let function = DigestFunction(rawValue: protoValue) else {
                throw .invalidArgument("unknown digest_function \(protoValue)")
            }
            return try function.requireSupported()
        }
        guard let hashLength else { return .sha256 }
        let candidates = inferable.filter { $0.hexLength == hashLength }
        // MD5 and MURMUR3 share a length; neither is supported, so either name is a fair message.
        guard let function = candidates.first else {
            throw .invalidArgument(
                "cannot infer the digest function from a \(hashLength)-character hash; "
                    + "this server supports \(supportedList) (\(DigestFunction.sha256.hexLength) hex characters)")
        }
        return try function.requireSupported()
    }

    public func requireSupported() throws(StrataError) -> DigestFunction {
        guard DigestFunction.supported.contains(self) else {
            throw .invalidArgument("digest function \(self) is not supported; this server supports \(DigestFunction.supportedList)")
        }
        return self
    }

    static var supportedList: String { supported.map(\.description).joined(separator: ", ") }

    /// An incremental hasher for this function.
    public func makeHasher() -> BlobHasher {
        precondition(self == .sha256, "only supported functions can hash")
        return BlobHasher()
    }
}

/// Incremental SHA-256 over streamed chunks.
public struct BlobHasher: Sendable {
    private var sha = SHA256()
    public private(set) var byteCount: Int64 = 0

    public init() {}

    public mutating func update<Bytes: DataProtocol>(_ bytes: Bytes) {
        sha.update(data: bytes)
        byteCount += Int64(bytes.count)
    }

    public func finalizeHex() -> String {
        sha.finalize().hexString
    }

    /// The digest of the bytes hashed so far, without writing its hash out as hex.
    public func finalizeDigest() -> Digest {
        let key = sha.finalize().withUnsafeBytes {
            DigestKey(hashBytes: $0, sizeBytes: byteCount, function: .sha256)
        }
        return Digest(key: key)
    }
}

extension Sequence where Element == UInt8 {
    /// Lower-case hex, zero-padded, as REAPI digests are written.
    public var hexString: String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
