import Foundation
import Crypto
import CBLAKE3

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

    /// The functions this server computes and advertises: every one works end to end (CAS, ByteStream,
    /// action cache, GetTree) and has its own namespace in every backend.
    public static let supported: [DigestFunction] = [.sha256, .sha1, .sha384, .sha512, .blake3]

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

    /// An incremental hasher for this function, which must be one of `supported`.
    public func makeHasher() -> BlobHasher {
        BlobHasher(function: self)
    }
}

/// Incremental hash of streamed chunks with one of the supported functions: SHA-256, SHA-1, SHA-384 and
/// SHA-512 from swift-crypto, BLAKE3 from its official C implementation (CBLAKE3: the BLAKE3 team's C
/// sources as Debian's librust-blake3-dev ships them, compiled by tools/build-deps with their SSE2,
/// SSE4.1, AVX2 and AVX-512 assembly; the widest the CPU has is picked at run time).
///
/// SHA-256, the default, is on every hot path: it keeps its own stored state, updated with one
/// well-predicted branch per chunk, so it costs what it did before the other functions existed.
public struct BlobHasher: Sendable {
    public let function: DigestFunction
    public private(set) var byteCount: Int64 = 0
    // A stored state per function, only the hasher's own one set: it is updated in place (optional
    // chaining mutates the stored value), never copied, as an enum with payloads would be per chunk.
    private var sha256 = SHA256()
    private var sha1: Insecure.SHA1?
    private var sha384: SHA384?
    private var sha512: SHA512?
    private var blake3: BLAKE3State?

    public init(function: DigestFunction = .sha256) {
        self.function = function
        switch function {
        case .sha256: break
        case .sha1: sha1 = Insecure.SHA1()
        case .sha384: sha384 = SHA384()
        case .sha512: sha512 = SHA512()
        case .blake3: blake3 = BLAKE3State()
        default: preconditionFailure("\(function) cannot hash: only supported functions can")
        }
    }

    public mutating func update<Bytes: DataProtocol>(_ bytes: Bytes) {
        byteCount += Int64(bytes.count)
        switch function {
        case .sha256: sha256.update(data: bytes)
        case .sha1: sha1?.update(data: bytes)
        case .sha384: sha384?.update(data: bytes)
        case .sha512: sha512?.update(data: bytes)
        default: blake3?.update(bytes)
        }
    }

    /// The hash of the bytes hashed so far, as lower-case hex.
    public func finalizeHex() -> String {
        finalizeDigest().hash
    }

    /// The digest of the bytes hashed so far, without writing a hash of at most 256 bits out as hex.
    public func finalizeDigest() -> Digest {
        let size = byteCount, function = function
        func digest(_ hash: UnsafeRawBufferPointer) -> Digest { Digest(hashBytes: hash, sizeBytes: size, function: function) }
        switch function {
        case .sha256: return sha256.finalize().withUnsafeBytes(digest)
        case .sha1: return sha1!.finalize().withUnsafeBytes(digest)
        case .sha384: return sha384!.finalize().withUnsafeBytes(digest)
        case .sha512: return sha512!.finalize().withUnsafeBytes(digest)
        default: return blake3!.finalize(digest)
        }
    }
}

/// The state of BLAKE3's C hasher (about 2 KB, so not copied along with every `BlobHasher`), copied
/// on write so that `BlobHasher` keeps value semantics: a copied hasher (a benchmark's shared
/// prefix) goes on independently of the original.
struct BLAKE3State: Sendable {
    private final class Box: @unchecked Sendable {
        // Mutated only while uniquely referenced (`BLAKE3State.update`), so never while shared.
        var hasher = blake3_hasher()
        init() { blake3_hasher_init(&hasher) }
        init(copying other: Box) { hasher = other.hasher }
    }

    private var box = Box()

    mutating func update<Bytes: DataProtocol>(_ bytes: Bytes) {
        if !isKnownUniquelyReferenced(&box) { box = Box(copying: box) }
        for region in bytes.regions {
            region.withUnsafeBytes { buffer in
                if let base = buffer.baseAddress { blake3_hasher_update(&box.hasher, base, buffer.count) }
            }
        }
    }

    func finalize<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        var output = [UInt8](repeating: 0, count: Int(BLAKE3_OUT_LEN))
        withUnsafePointer(to: &box.hasher) { blake3_hasher_finalize($0, &output, output.count) }
        return output.withUnsafeBytes(body)
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
