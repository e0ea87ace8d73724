import Foundation
import StrataCompression
import StrataCore
import Testing

/// Compressible but not trivial bytes: words from a small vocabulary picked by a fixed LCG.
func sampleData(_ count: Int, seed: UInt64 = 1) -> Data {
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta ", "eta ", "theta\n"].map { Array($0.utf8) }
    var state = seed
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count + 8)
    while bytes.count < count {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        bytes += words[Int(state >> 61)]
        if state & 0xff == 0 { bytes.append(UInt8(truncatingIfNeeded: state >> 24)) }
    }
    return Data(bytes.prefix(count))
}

func isInvalidArgument(_ error: any Error, _ fragment: String) -> Bool {
    guard let error = error as? StrataError else { return false }
    return error.code == .invalidArgument && error.message.contains(fragment)
}

@Suite struct ZstdTests {
    @Test(arguments: [0, 1, 1000, (1 << 20) * 3 + 17])
    func roundTripsThroughStreamingBodies(size: Int) async throws {
        let data = sampleData(size)
        let compressed = try await BlobBody(data: data, chunkSize: 100_000)
            .zstdCompressed(uncompressedSize: Int64(size)).collect(limit: 1 << 30)
        if size > 1000 { #expect(compressed.count < size / 2) }
        // Fed back in small pieces, so frames and chunks cross at arbitrary points.
        let body = BlobBody(data: compressed, chunkSize: 777).zstdDecompressed(expectedSize: Int64(size), subject: "blob x")
        var chunks = 0
        var out = Data()
        for try await chunk in body {
            #expect(chunk.count <= BlobBody.defaultChunkSize)
            chunks += 1
            out.append(chunk)
        }
        #expect(out == data)
        #expect(try ZstdDecompressor.decompress(compressed, expectedSize: Int64(size), subject: "x") == data)
        #expect(try ZstdDecompressor.decompress(ZstdCompressor.compress(data), expectedSize: Int64(size), subject: "x") == data)
    }

    @Test func decompressedChunksStayBoundedForAHighlyCompressibleInput() async throws {
        // 64 MiB of zeros compress to a few KiB, which one input chunk holds: the output still comes a
        // chunk at a time.
        let size = 64 << 20
        let compressed = try ZstdCompressor.compress(Data(count: size))
        #expect(compressed.count < 64 << 10)
        var total = 0
        for try await chunk in BlobBody(data: compressed).zstdDecompressed(expectedSize: Int64(size), subject: "zeros") {
            #expect(chunk.count <= BlobBody.defaultChunkSize)
            total += chunk.count
        }
        #expect(total == size)
    }

    @Test func refusesADecompressionBombAtItsFirstExtraByte() throws {
        let bomb = try ZstdCompressor.compress(Data(count: 256 << 20))
        let decompressor = try ZstdDecompressor(expectedSize: 1000, subject: "blob b")
        decompressor.feed(bomb)
        #expect { while !decompressor.needsInput { _ = try decompressor.output() } } throws: {
            isInvalidArgument($0, "more than the digest's 1000 bytes")
        }
        #expect(decompressor.produced == 1001)
    }

    @Test func refusesTruncatedCorruptShortAndTrailingData() throws {
        let data = sampleData(50_000)
        let frame = try ZstdCompressor.compress(data)
        #expect { try ZstdDecompressor.decompress(frame.prefix(frame.count - 5), expectedSize: 50_000, subject: "t") } throws: {
            isInvalidArgument($0, "truncated")
        }
        #expect { try ZstdDecompressor.decompress(Data(), expectedSize: 0, subject: "t") } throws: {
            isInvalidArgument($0, "truncated")
        }
        #expect { try ZstdDecompressor.decompress(frame + Data("garbage!".utf8), expectedSize: 50_000, subject: "t") } throws: {
            isInvalidArgument($0, "not valid")
        }
        var corrupt = frame
        corrupt[corrupt.count / 2] ^= 0x5a
        #expect { try ZstdDecompressor.decompress(corrupt, expectedSize: 50_000, subject: "t") } throws: {
            isInvalidArgument($0, "zstd data of t")
        }
        #expect { try ZstdDecompressor.decompress(frame, expectedSize: 50_001, subject: "t") } throws: {
            isInvalidArgument($0, "decompresses to 50000 bytes, the digest says 50001")
        }
        #expect { try ZstdDecompressor.decompress(Data("not zstd at all".utf8), expectedSize: 15, subject: "t") } throws: {
            isInvalidArgument($0, "not valid")
        }
    }

    @Test func acceptsConcatenatedFrames() throws {
        let first = sampleData(10_000, seed: 1), second = sampleData(20_000, seed: 2)
        let stream = try ZstdCompressor.compress(first) + ZstdCompressor.compress(second)
        #expect(try ZstdDecompressor.decompress(stream, expectedSize: 30_000, subject: "c") == first + second)
    }

    @Test func boundsTheCompressedSizeOfAnUpload() {
        #expect(Zstd.maximumCompressedSize(ofUncompressed: 0) > 64)
        #expect(Zstd.maximumCompressedSize(ofUncompressed: 1 << 30) > 1 << 30)
        #expect(Zstd.maximumCompressedSize(ofUncompressed: .max) == .max)
    }
}
