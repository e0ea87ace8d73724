import Crypto
import Foundation
import StrataChunking
import StrataCore
import Testing

/// Deterministic bytes (SplitMix64, each output little-endian), reproducible in any language: the
/// reference chunk lengths below were computed from the same bytes by an implementation we did not
/// write (PyPI's pyfastcdc 0.3.1, normalized_chunking=2), which reproduces REAPI's
/// fastcdc2020_test_vectors.txt for both of its seeds.
func splitMixBytes(count: Int, seed: UInt64) -> Data {
    var state = seed
    var out = Data(capacity: count + 8)
    while out.count < count {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        withUnsafeBytes(of: z.littleEndian) { out.append(contentsOf: $0) }
    }
    return out.prefix(count)
}

@Suite struct FastCDC2020Tests {
    /// The parameters of the spec's test vectors.
    static func vectorParameters(seed: UInt32) throws -> FastCDC2020Parameters {
        try FastCDC2020Parameters(minimumSize: 4096, averageSize: 16384, maximumSize: 65535, seed: seed)
    }

    @Test func inputIsTheReferenceInput() {
        let data = splitMixBytes(count: 1 << 20, seed: 1)
        #expect(SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
            == "85b66b3a5816d686deb42f2d2473d9a7121ceb75c822b838f958c76ca86ed8ea")
    }

    @Test func matchesTheReferenceWithTheVectorsParametersAndSeedZero() throws {
        let chunker = FastCDC2020(try Self.vectorParameters(seed: 0))
        #expect(chunker.chunkLengths(of: splitMixBytes(count: 1 << 20, seed: 1)) == [
            16594, 11534, 16852, 17194, 19591, 26473, 7440, 16946, 19436, 20507, 8036, 17012, 29972, 19946, 17264,
            13958, 17056, 17615, 17079, 17373, 19521, 16835, 4530, 16566, 18140, 26280, 18734, 24688, 20497, 32646,
            11536, 20382, 6627, 18046, 20082, 19777, 13728, 7013, 20809, 17324, 26083, 21309, 12662, 17291, 17306,
            17660, 16948, 18186, 22363, 18172, 12044, 24671, 17141, 20916, 17696, 21046, 18817, 18770, 7856,
        ])
    }

    @Test func matchesTheReferenceWithSeed666() throws {
        let chunker = FastCDC2020(try Self.vectorParameters(seed: 666))
        #expect(chunker.chunkLengths(of: splitMixBytes(count: 1 << 20, seed: 1)) == [
            26685, 27436, 13873, 23721, 13589, 16699, 22068, 10960, 24902, 21579, 23504, 17810, 29798, 17106, 16768,
            16338, 20404, 21692, 24277, 18136, 20931, 19428, 16492, 22827, 14162, 21760, 18622, 18719, 20847, 16404,
            6798, 17492, 20180, 17857, 9241, 20328, 16892, 16423, 11285, 4772, 9019, 16833, 19909, 18494, 18160,
            25378, 13787, 20654, 20067, 23896, 11721, 19751, 25781, 17295, 17877, 22330, 8819,
        ])
    }

    @Test func matchesTheReferenceAtTheSmallestAverage() throws {
        let chunker = FastCDC2020(try FastCDC2020Parameters(averageSize: 1024))
        #expect(chunker.chunkLengths(of: splitMixBytes(count: 100_000, seed: 7)) == [
            1410, 1203, 1456, 1088, 1262, 1495, 1323, 804, 1284, 1163, 661, 1031, 1092, 1059, 1113, 1417, 971, 1126,
            1226, 822, 1293, 1118, 1200, 378, 1554, 1797, 825, 1180, 1097, 1137, 1268, 1655, 2327, 619, 1118, 862,
            1033, 1687, 1141, 1085, 1287, 1264, 1240, 1353, 1025, 1030, 1046, 1074, 1059, 1399, 1111, 1056, 417, 1061,
            869, 1252, 1034, 1063, 1318, 519, 1121, 1080, 1698, 1670, 640, 1114, 1304, 342, 667, 726, 1185, 1130,
            1079, 1386, 1926, 517, 1369, 1390, 829, 1078, 1138, 459, 1266, 1319, 1039, 273, 1034, 1045, 1098, 221,
        ])
    }

    @Test func matchesTheReferenceAtTheRecommendedAverage() throws {
        let chunker = FastCDC2020(try FastCDC2020Parameters())
        #expect(chunker.parameters.minimumSize == 128 << 10 && chunker.parameters.maximumSize == 2 << 20)
        #expect(chunker.chunkLengths(of: splitMixBytes(count: 6 << 20, seed: 3)) == [
            475159, 552277, 556470, 598957, 660251, 674880, 533822, 649135, 416036, 612280, 207647, 354542,
        ])
    }

    /// Data without cut points (all zeros) is cut at the maximum.
    @Test func cutsAtTheMaximumWhereNoBoundaryIsFound() throws {
        let chunker = FastCDC2020(try FastCDC2020Parameters(averageSize: 16384))
        #expect(chunker.chunkLengths(of: Data(count: 200_000)) == [65536, 65536, 65536, 3392])
        #expect(chunker.chunkLengths(of: Data(count: 4096)) == [4096])
        #expect(chunker.chunkLengths(of: Data()) == [])
    }

    @Test(arguments: [1, 7, 4096, 65536, 1 << 20])
    func splittingAStreamGivesTheSameChunksAsTheWholeBuffer(pieceSize: Int) async throws {
        let data = splitMixBytes(count: pieceSize == 1 ? 200_000 : 1 << 20, seed: 1)
        let chunker = FastCDC2020(try Self.vectorParameters(seed: 0))
        var chunks: [Data] = []
        try await chunker.split(BlobBody(data: data, chunkSize: pieceSize)) { chunks.append($0) }
        #expect(chunks.map(\.count) == chunker.chunkLengths(of: data))
        #expect(chunks.reduce(Data(), +) == data)
    }

    @Test func rejectsParametersOutsideTheSpec() {
        for average in [512, 3000, 2 << 20] {
            #expect(throws: FastCDC2020Parameters.ParameterError.self) { try FastCDC2020Parameters(averageSize: average) }
        }
        #expect(throws: FastCDC2020Parameters.ParameterError.self) {
            try FastCDC2020Parameters(minimumSize: 9000, averageSize: 8192, maximumSize: 16384)
        }
    }
}
