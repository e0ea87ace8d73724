import Foundation

/// A validated content digest: lower-case hex hash of the function's length and a non-negative size.
///
/// Blobs are always keyed by hash *and* size: two digests with one hash and different sizes are
/// different keys, so a wrong size can never alias a stored blob.
public struct Digest: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let hash: String
    public let sizeBytes: Int64
    public let function: DigestFunction
    /// The hash's bytes and the size as plain words, decoded once while the hex is validated: what
    /// `==` and hashing use, so sets and dictionaries of digests never hash 64 characters of hex.
    public let key: DigestKey

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
        let decoded = utf8.withContiguousStorageIfAvailable { DigestKey.decode($0, sizeBytes: sizeBytes, function: function) }
            ?? Array(utf8).withUnsafeBufferPointer { DigestKey.decode($0, sizeBytes: sizeBytes, function: function) }
        switch decoded {
        case .success(let key): self.key = key
        case .failure(.upperCase): throw .invalidArgument("digest \(hash)/\(sizeBytes): the hash must be lower-case hex")
        case .failure(.notHex): throw .invalidArgument("digest \(hash.prefix(128))/\(sizeBytes): the hash is not hex")
        }
        self.hash = hash
        self.sizeBytes = sizeBytes
        self.function = function
    }

    /// For hex this module produced itself (a hasher's output).
    private init(trusted hash: String, sizeBytes: Int64, function: DigestFunction) {
        self.hash = hash
        self.sizeBytes = sizeBytes
        self.function = function
        self.key = try! Array(hash.utf8).withUnsafeBufferPointer {
            DigestKey.decode($0, sizeBytes: sizeBytes, function: function)
        }.get()
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

    public static func == (lhs: Digest, rhs: Digest) -> Bool {
        // The key holds the first 256 bits of the hash: longer hashes also compare the rest.
        lhs.key == rhs.key && (lhs.function.hexLength <= DigestKey.hexCapacity || lhs.hash == rhs.hash)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(key)
    }

    public static func < (lhs: Digest, rhs: Digest) -> Bool {
        (lhs.hash, lhs.sizeBytes) < (rhs.hash, rhs.sizeBytes)
    }
}

/// A digest as five plain words: the first 256 bits of its hash and its size, with its function.
///
/// Hashing and comparing one is a few word operations with no reference counting, where a `Digest`'s
/// String would hash 64 characters of hex and be retained and released on every copy; the in-memory
/// stores key their dictionaries with it. It identifies a digest exactly for hashes of at most 256 bits,
/// which covers every function Strata computes (SHA256); `Digest`'s own `==` also compares the hex of
/// longer ones.
public struct DigestKey: Hashable, Sendable {
    public let w0: UInt64
    public let w1: UInt64
    public let w2: UInt64
    public let w3: UInt64
    public let sizeBytes: Int64
    public let function: DigestFunction

    /// Hex characters the four words hold.
    public static let hexCapacity = 64

    enum DecodeFailure: Error { case upperCase, notHex }

    /// Validates lower-case hex and packs its first 64 characters (big-endian per word, zero-padded).
    static func decode(
        _ hex: UnsafeBufferPointer<UInt8>, sizeBytes: Int64, function: DigestFunction
    ) -> Result<DigestKey, DecodeFailure> {
        // The table is fetched once per call: read per character, its lazy initialisation check
        // (swift_once) cost as much as the decoding.
        nibbles.withUnsafeBufferPointer { nibbles in
            var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
            for (position, byte) in hex.enumerated() {
                // Check every character, in order, so the first bad one decides the message.
                let nibble = nibbles[Int(byte)]
                if nibble > 15 { return .failure(nibble == upperCaseNibble ? .upperCase : .notHex) }
                guard position < hexCapacity else { continue }
                let value = UInt64(nibble)
                switch position >> 4 {
                case 0: words.0 = words.0 << 4 | value
                case 1: words.1 = words.1 << 4 | value
                case 2: words.2 = words.2 << 4 | value
                default: words.3 = words.3 << 4 | value
                }
            }
            return .success(DigestKey(w0: words.0, w1: words.1, w2: words.2, w3: words.3, sizeBytes: sizeBytes, function: function))
        }
    }

    private static let upperCaseNibble: UInt8 = 0xfe

    /// Each byte's value as a lower-case hex digit; `upperCaseNibble` for A-F, 0xff for the rest.
    private static let nibbles: [UInt8] = (0...255).map { byte -> UInt8 in
        switch UInt8(byte) {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt8(byte) - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt8(byte) - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): upperCaseNibble
        default: 0xff
        }
    }
}
