import Crypto
import Foundation

/// The parameters of REAPI's `FastCdc2020Params` (remote_execution.proto v2.12): an average chunk size
/// and a seed, from which the minimum (average / 4) and maximum (average × 4) follow. Normalization is
/// fixed at level 2 by the spec.
public struct FastCDC2020Parameters: Sendable, Hashable, CustomStringConvertible {
    public let minimumSize: Int
    public let averageSize: Int
    public let maximumSize: Int
    public let seed: UInt32

    /// The spec's recommended average, 512 KiB.
    public static let recommendedAverageSize = 512 << 10
    /// The averages the spec allows (1 KiB to 1 MiB); clients ignore parameters outside it.
    public static let allowedAverageSizes = (1 << 10)...(1 << 20)

    /// The spec's derivation: minimum average / 4, maximum average × 4. `averageSize` must be a power of
    /// two within `allowedAverageSizes` (the masks are chosen by its logarithm).
    public init(averageSize: Int = FastCDC2020Parameters.recommendedAverageSize, seed: UInt32 = 0) throws(ParameterError) {
        guard Self.allowedAverageSizes.contains(averageSize) else {
            throw ParameterError(
                "the average chunk size \(averageSize) is outside 1024...1048576 bytes (1 KiB to 1 MiB, REAPI's FastCdc2020Params)")
        }
        try self.init(minimumSize: averageSize / 4, averageSize: averageSize, maximumSize: averageSize * 4, seed: seed)
    }

    /// Any sizes the algorithm can work with, such as the spec's test vectors' (4096, 16384, 65535).
    public init(minimumSize: Int, averageSize: Int, maximumSize: Int, seed: UInt32 = 0) throws(ParameterError) {
        guard averageSize > 0, averageSize & (averageSize - 1) == 0 else {
            throw ParameterError("the average chunk size \(averageSize) is not a power of two")
        }
        let bits = averageSize.trailingZeroBitCount
        guard bits - FastCDC2020.normalizationLevel >= FastCDC2020.lowestMaskBits,
              bits + FastCDC2020.normalizationLevel <= FastCDC2020.highestMaskBits
        else {
            throw ParameterError("the average chunk size \(averageSize) has no FastCDC mask (2^\(FastCDC2020.lowestMaskBits + 2) to 2^\(FastCDC2020.highestMaskBits - 2) bytes)")
        }
        guard minimumSize > 0, minimumSize <= averageSize, averageSize <= maximumSize else {
            throw ParameterError("chunk sizes must satisfy 0 < minimum (\(minimumSize)) <= average (\(averageSize)) <= maximum (\(maximumSize))")
        }
        self.minimumSize = minimumSize
        self.averageSize = averageSize
        self.maximumSize = maximumSize
        self.seed = seed
    }

    /// The spec's recommendation: average 512 KiB (minimum 128 KiB, maximum 2 MiB), seed 0.
    public static let recommended = try! FastCDC2020Parameters()

    public var description: String {
        "FastCDC 2020 (average \(averageSize), minimum \(minimumSize), maximum \(maximumSize) bytes, seed \(seed))"
    }

    public struct ParameterError: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }
}

/// FastCDC 2020 (Xia et al., "The Design of Fast Content-Defined Chunking for Data Deduplication Based
/// Storage Systems", TPDS 2020) as REAPI's `FAST_CDC_2020` fixes it: Gear hash rolled two bytes per
/// step, cut-point skipping below the minimum, normalized chunking at level 2 (a stricter mask before the
/// average, a looser one after it), and a cut forced at the maximum. A client splitting the same bytes
/// with the same parameters gets the same chunks. It reproduces the spec's test vectors
/// (fastcdc2020_test_vectors.txt, both seeds, on the image they name, which is not in this repository);
/// `FastCDC2020Tests` checks it against the chunks of an implementation we did not write on generated
/// bytes, and Tests/e2e/split_splice.py does so through the server.
public struct FastCDC2020: Sendable {
    public let parameters: FastCDC2020Parameters

    static let normalizationLevel = 2
    /// The reference implementation's mask table covers 2^5 ... 2^25.
    static let lowestMaskBits = 5
    static let highestMaskBits = 25

    private let gear: [UInt64]
    /// `gear` shifted left by one: the first byte of a two-byte step, which the hash shifts once more.
    private let gearShifted: [UInt64]
    private let smallMask: UInt64
    private let largeMask: UInt64

    public init(_ parameters: FastCDC2020Parameters) {
        self.parameters = parameters
        let seed = UInt64(parameters.seed)
        let gear = Self.gearTable.map { $0 ^ seed }
        self.gear = gear
        // The seed is mixed into the shifted table shifted too, as the reference implementations do,
        // so that a seeded table is still a shifted copy of the seeded one.
        self.gearShifted = Self.gearTable.map { ($0 << 1) ^ (seed << 1) }
        let bits = parameters.averageSize.trailingZeroBitCount
        smallMask = Self.masks[bits + Self.normalizationLevel]
        largeMask = Self.masks[bits - Self.normalizationLevel]
    }

    /// The length of the chunk that starts at `bytes`' first byte. `bytes` holds either at least
    /// `maximumSize` bytes or all that is left of the blob (the last chunk is whatever remains).
    public func chunkLength(_ bytes: UnsafeRawBufferPointer) -> Int {
        var remaining = bytes.count
        let minimum = parameters.minimumSize
        if remaining <= minimum { return remaining }
        var center = parameters.averageSize
        if remaining > parameters.maximumSize {
            remaining = parameters.maximumSize
        } else if remaining < center {
            center = remaining
        }
        let smallMask = self.smallMask, largeMask = self.largeMask
        let smallMaskShifted = smallMask << 1, largeMaskShifted = largeMask << 1
        return gear.withUnsafeBufferPointer { gear in
            gearShifted.withUnsafeBufferPointer { gearShifted in
                var hash: UInt64 = 0
                // Positions step by two from the minimum (rounded down to even): the first byte of each
                // pair is tested against the mask shifted by one, the second against the mask itself.
                var position = minimum / 2 * 2
                let middle = center / 2 * 2
                let end = remaining / 2 * 2
                while position < middle {
                    hash = (hash << 2) &+ gearShifted[Int(bytes[position])]
                    if hash & smallMaskShifted == 0 { return position }
                    hash = hash &+ gear[Int(bytes[position + 1])]
                    if hash & smallMask == 0 { return position + 1 }
                    position += 2
                }
                while position < end {
                    hash = (hash << 2) &+ gearShifted[Int(bytes[position])]
                    if hash & largeMaskShifted == 0 { return position }
                    hash = hash &+ gear[Int(bytes[position + 1])]
                    if hash & largeMask == 0 { return position + 1 }
                    position += 2
                }
                return remaining
            }
        }
    }

    /// The chunk lengths of a whole buffer, in order (tests and small blobs).
    public func chunkLengths(of data: some ContiguousBytes) -> [Int] {
        data.withUnsafeBytes { bytes in
            var lengths: [Int] = []
            var start = 0
            while start < bytes.count {
                let length = chunkLength(UnsafeRawBufferPointer(rebasing: bytes[start...]))
                lengths.append(length)
                start += length
            }
            return lengths
        }
    }

    /// GEAR[i]: the first 8 bytes (big-endian) of MD5 over 64 bytes of value i. This is how the paper's C
    /// reference implementation fills its table, and it gives the table fastcdc-rs and the other
    /// implementations the proto names ship as literals (the proto's summary, "high_64_bits(MD5(byte(i)))",
    /// abbreviates it: MD5 of the single byte i gives a different table, which does not reproduce the
    /// spec's test vectors).
    static let gearTable: [UInt64] = (0..<256).map { value in
        let digest = Insecure.MD5.hash(data: [UInt8](repeating: UInt8(value), count: 64))
        return digest.withUnsafeBytes { bytes in
            bytes.prefix(8).reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
        }
    }

    /// The boundary masks of the paper's C reference implementation, by number of effective bits (index
    /// 5 to 25; the spec takes its masks from there): `masks[log2(average) ± 2]` for normalization level 2.
    static let masks: [UInt64] = [
        0, 0, 0, 0, 0,
        0x0000_0000_0180_4110, // 2^5
        0x0000_0000_0180_3110,
        0x0000_0000_1803_5100,
        0x0000_0018_0003_5300,
        0x0000_0190_0035_3000,
        0x0000_5900_0353_0000, // 2^10
        0x0000_d900_0353_0000,
        0x0000_d901_0353_0000,
        0x0000_d903_0353_0000,
        0x0000_d903_1353_0000,
        0x0000_d90f_0353_0000, // 2^15
        0x0000_d903_0353_7000,
        0x0000_d907_0353_7000,
        0x0000_d907_0753_7000,
        0x0000_d917_0753_7000,
        0x0000_d917_4753_7000, // 2^20
        0x0000_d917_6753_7000,
        0x0000_d937_6753_7000,
        0x0000_d937_7753_7000,
        0x0000_d937_7757_7000,
        0x0000_db37_7757_7000, // 2^25
    ]
}
