import Foundation

/// A validated content digest: lower-case hex hash of the function's length and a non-negative size.
///
/// Blobs are always keyed by hash *and* size: two digests with one hash and different sizes are
/// different keys, so a wrong size can never alias a stored blob.
public struct Digest: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// The hash's bytes and the size as plain words, decoded once while the hex is validated: what
    /// `==` and hashing use, so sets and dictionaries of digests never hash 64 characters of hex. It is
    /// the whole digest for hashes of up to 256 bits (every function Strata computes): the hex is
    /// written out again only when asked for, so a FindMissingBlobs of 1000 digests decoded straight
    /// off the wire allocates no String at all.
    public let key: DigestKey
    /// The hex of a hash longer than the key holds (SHA-384, SHA-512, VSO), which Strata accepts in
    /// digests it never computes; empty for the rest.
    private let longHash: String

    /// Lower-case hex.
    public var hash: String { longHash.isEmpty ? key.hex : longHash }
    public var sizeBytes: Int64 { key.sizeBytes }
    public var function: DigestFunction { key.function }

    /// Validates `hash` and `sizeBytes` for `function`; INVALID_ARGUMENT says which part is wrong.
    public init(hash: String, sizeBytes: Int64, function: DigestFunction = .sha256) throws(StrataError) {
        var hash = hash
        let result = hash.withUTF8 { utf8 in
            Result { () throws(StrataError) in
                try Digest(hex: UnsafeRawBufferPointer(utf8), sizeBytes: sizeBytes, function: function)
            }
        }
        self = try result.get()
    }

    /// Validates the hex in `hex` (UTF-8 bytes, e.g. a slice of a request's wire bytes) and `sizeBytes`
    /// for `function`; INVALID_ARGUMENT says which part is wrong. Allocates only for hashes over 256 bits.
    public init(hex: UnsafeRawBufferPointer, sizeBytes: Int64, function: DigestFunction) throws(StrataError) {
        guard sizeBytes >= 0 else {
            throw .invalidArgument("digest \(Self.quoted(hex))/\(sizeBytes): size_bytes must not be negative")
        }
        guard hex.count == function.hexLength else {
            throw .invalidArgument(
                "digest \(Self.quoted(hex))/\(sizeBytes): a \(function) hash has \(function.hexLength) hex characters, this one has \(hex.count)")
        }
        switch DigestKey.decode(hex.assumingMemoryBound(to: UInt8.self), sizeBytes: sizeBytes, function: function) {
        case .success(let key):
            self.key = key
            self.longHash = function.hexLength > DigestKey.hexCapacity ? String(decoding: hex, as: UTF8.self) : ""
        case .failure(.upperCase):
            throw .invalidArgument("digest \(Self.quoted(hex))/\(sizeBytes): the hash must be lower-case hex")
        case .failure(.notHex):
            throw .invalidArgument("digest \(Self.quoted(hex))/\(sizeBytes): the hash is not hex")
        }
    }

    private static func quoted(_ bytes: UnsafeRawBufferPointer) -> String {
        StrataError.echo(String(decoding: bytes, as: UTF8.self))
    }

    /// A digest whose hash was computed here (a hasher's output), for functions whose hash fits the key.
    public init(key: DigestKey) {
        precondition(key.function.hexLength <= DigestKey.hexCapacity && key.sizeBytes >= 0)
        self.key = key
        self.longHash = ""
    }

    /// A digest whose hash was computed here: a hasher's output bytes, of any length.
    init(hashBytes: UnsafeRawBufferPointer, sizeBytes: Int64, function: DigestFunction) {
        precondition(hashBytes.count * 2 == function.hexLength && sizeBytes >= 0)
        self.key = DigestKey(hashBytes: hashBytes, sizeBytes: sizeBytes, function: function)
        self.longHash = function.hexLength > DigestKey.hexCapacity ? hashBytes.hexString : ""
    }

    /// The digest of the empty blob, which is always present and never stored.
    public static func empty(_ function: DigestFunction = .sha256) -> Digest {
        emptyDigests[function] ?? function.makeHasher().finalizeDigest()
    }

    /// The empty blob's digest for each supported function, computed once.
    private static let emptyDigests: [DigestFunction: Digest] = Dictionary(
        uniqueKeysWithValues: DigestFunction.supported.map { ($0, $0.makeHasher().finalizeDigest()) })

    public static let emptySHA256 = Digest.empty(.sha256)

    /// Whether this is the empty blob's digest for its function (the function is part of the key).
    public var isEmpty: Bool {
        guard sizeBytes == 0 else { return false }
        return key.function == .sha256 ? key == Digest.emptySHA256.key : self == Digest.empty(function)
    }

    /// Computes the digest of `bytes`.
    public static func of(_ bytes: some DataProtocol, function: DigestFunction = .sha256) -> Digest {
        var hasher = function.makeHasher()
        hasher.update(bytes)
        return hasher.finalizeDigest()
    }

    /// Checks that `data` is this blob; INVALID_ARGUMENT says whether the size or the hash differs.
    public func verify(_ data: some DataProtocol) throws(StrataError) {
        guard Int64(data.count) == sizeBytes else {
            throw .invalidArgument("blob \(self): received \(data.count) bytes, the digest says \(sizeBytes)")
        }
        var hasher = function.makeHasher()
        hasher.update(data)
        let actual = hasher.finalizeDigest()
        guard actual == self else {
            throw Self.hashMismatch(self, actual: actual.hash)
        }
    }

    static func hashMismatch(_ digest: Digest, actual: String) -> StrataError {
        .invalidArgument("blob \(digest): the data's \(digest.function) hash is \(actual), not the digest's \(digest.hash)")
    }

    public var description: String { "\(hash)/\(sizeBytes)" }

    public static func == (lhs: Digest, rhs: Digest) -> Bool {
        // The key holds the first 256 bits of the hash: longer hashes also compare the rest.
        lhs.key == rhs.key && lhs.longHash == rhs.longHash
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(key)
    }

    /// By hash, then size, as the hex sorts: the key's words are the hex's nibbles in order. The same
    /// hex and size under two functions (two digests) are ordered by the function's enum value.
    public static func < (lhs: Digest, rhs: Digest) -> Bool {
        if !lhs.longHash.isEmpty || !rhs.longHash.isEmpty || lhs.function.hexLength != rhs.function.hexLength {
            return (lhs.hash, lhs.sizeBytes, lhs.function.rawValue) < (rhs.hash, rhs.sizeBytes, rhs.function.rawValue)
        }
        let l = lhs.key, r = rhs.key
        return (l.w0, l.w1, l.w2, l.w3, l.sizeBytes, l.function.rawValue) < (r.w0, r.w1, r.w2, r.w3, r.sizeBytes, r.function.rawValue)
    }
}

/// A digest as five plain words: the first 256 bits of its hash and its size, with its function.
///
/// Hashing and comparing one is a few word operations with no reference counting, where a String of
/// hex would hash 64 characters and be retained and released on every copy; the in-memory stores key
/// their dictionaries with it. It identifies a digest exactly for hashes of at most 256 bits, which
/// covers every function Strata computes (SHA256); `Digest` keeps the hex of longer ones beside it.
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

    /// Validates lower-case hex and packs its first 64 characters, 16 to a word from the most
    /// significant end (a shorter hash's last word holds its remaining nibbles in its low bits).
    static func decode(
        _ hex: UnsafeBufferPointer<UInt8>, sizeBytes: Int64, function: DigestFunction
    ) -> Result<DigestKey, DecodeFailure> {
        // The table is fetched once per call: read per character, its lazy initialisation check
        // (swift_once) cost as much as the decoding.
        nibbles.withUnsafeBufferPointer { nibbles in
            // The common case, 64 characters of good hex, without a check or a branch per character;
            // anything else is decoded again below to find the first bad character.
            if hex.count == hexCapacity, let hexBase = hex.baseAddress, let table = nibbles.baseAddress {
                var bad: UInt8 = 0
                func word(_ start: Int) -> UInt64 {
                    var word: UInt64 = 0
                    for offset in start..<(start + 16) {
                        let nibble = table[Int(hexBase[offset])]
                        bad |= nibble
                        word = word << 4 | UInt64(nibble & 0xf)
                    }
                    return word
                }
                let key = DigestKey(w0: word(0), w1: word(16), w2: word(32), w3: word(48), sizeBytes: sizeBytes, function: function)
                if bad <= 15 { return .success(key) }
            }
            var words = PackedWords()
            for (position, byte) in hex.enumerated() {
                // Check every character, in order, so the first bad one decides the message.
                let nibble = nibbles[Int(byte)]
                if nibble > 15 { return .failure(nibble == upperCaseNibble ? .upperCase : .notHex) }
                guard position < hexCapacity else { continue }
                words.push(UInt64(nibble), bits: 4, at: position)
            }
            return .success(words.key(sizeBytes: sizeBytes, function: function))
        }
    }

    /// The four words filled from their most significant end, a nibble or a byte at a time.
    private struct PackedWords {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

        /// Appends the `bits`-bit `value` that is unit number `position` of the hash.
        mutating func push(_ value: UInt64, bits: Int, at position: Int) {
            switch position * bits / 64 {
            case 0: words.0 = words.0 << UInt64(bits) | value
            case 1: words.1 = words.1 << UInt64(bits) | value
            case 2: words.2 = words.2 << UInt64(bits) | value
            default: words.3 = words.3 << UInt64(bits) | value
            }
        }

        func key(sizeBytes: Int64, function: DigestFunction) -> DigestKey {
            DigestKey(w0: words.0, w1: words.1, w2: words.2, w3: words.3, sizeBytes: sizeBytes, function: function)
        }
    }

    public init(w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64, sizeBytes: Int64, function: DigestFunction) {
        (self.w0, self.w1, self.w2, self.w3) = (w0, w1, w2, w3)
        self.sizeBytes = sizeBytes
        self.function = function
    }

    /// Packs a hash's bytes as `decode` packs its hex: two nibbles a byte, the first 32 bytes.
    public init(hashBytes: UnsafeRawBufferPointer, sizeBytes: Int64, function: DigestFunction) {
        var words = PackedWords()
        for (position, byte) in hashBytes.prefix(Self.hexCapacity / 2).enumerated() {
            words.push(UInt64(byte), bits: 8, at: position)
        }
        self = words.key(sizeBytes: sizeBytes, function: function)
    }

    /// Hex characters `writeHex` writes: the function's, up to `hexCapacity`.
    public var hexCount: Int { min(function.hexLength, Self.hexCapacity) }

    /// The hash as lower-case hex (its first `hexCapacity` characters for longer hashes).
    public var hex: String {
        String(unsafeUninitializedCapacity: hexCount) { buffer in
            writeHex(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// Writes the hash as lower-case hex at the start of `out`, which must hold `hexCount` bytes;
    /// returns `hexCount`.
    @discardableResult
    public func writeHex(into out: UnsafeMutableRawBufferPointer) -> Int {
        let length = hexCount
        precondition(out.count >= length, "no room for the hex of a digest")
        let digits: StaticString = "0123456789abcdef"
        var position = 0
        for index in 0..<4 where position < length {
            let word = switch index { case 0: w0; case 1: w1; case 2: w2; default: w3 }
            // A word holds 16 nibbles, the last word of a shorter hash only its remaining ones.
            let nibbles = min(16, length - index * 16)
            var shift = 4 * (nibbles - 1)
            while shift >= 0 {
                out[position] = digits.utf8Start[Int(truncatingIfNeeded: (word >> UInt64(shift)) & 0xf)]
                position += 1
                shift -= 4
            }
        }
        return length
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
