import Foundation
import StrataAPI
import StrataCompression
import StrataCore
import StrataProto

/// The compressors of REAPI's `Compressor.Value` that Strata speaks on the wire: the ones Capabilities
/// lists as `supported_compressors` and `supported_batch_update_compressors` (identity is implied).
enum BlobCompressor: Int, Sendable, CaseIterable {
    case identity = 0
    case zstd = 1

    /// The ones Capabilities advertises.
    static let advertised: [BlobCompressor] = [.zstd]

    /// From a ByteStream resource name's `compressed-blobs/{compressor}/` segment (nil: `blobs/`).
    /// The spec names compressors by their enum value in lower case.
    init(resourceSegment: String?) throws(StrataError) {
        switch resourceSegment {
        case nil, "identity": self = .identity
        case "zstd": self = .zstd
        case let other?:
            let known = ["deflate", "brotli"].contains(other)
            throw .invalidArgument(
                "compressed-blobs/\(StrataError.echo(other)): \(known ? "compressor not supported" : "unknown compressor"); this server supports zstd (and identity, as blobs/)")
        }
    }

    /// From a `Compressor.Value` of a batch request.
    init(protoValue: Int) throws(StrataError) {
        guard let compressor = BlobCompressor(rawValue: protoValue) else {
            let name = Build_Bazel_Remote_Execution_V2_Compressor.Value(rawValue: protoValue).map { "\($0)".uppercased() } ?? "\(protoValue)"
            throw .invalidArgument("compressor \(name) is not supported; supported_batch_update_compressors lists ZSTD")
        }
        self = compressor
    }

    var proto: Build_Bazel_Remote_Execution_V2_Compressor.Value {
        Build_Bazel_Remote_Execution_V2_Compressor.Value(rawValue: rawValue) ?? .identity
    }

    /// `data`, sent by a client compressed with this compressor, as the blob `digest` (not verified
    /// here: the store verifies what it writes). INVALID_ARGUMENT when it is not exactly that blob.
    func decompress(_ data: Data, for digest: Digest) throws(StrataError) -> Data {
        switch self {
        case .identity: return data
        case .zstd: return try ZstdDecompressor.decompress(data, expectedSize: digest.sizeBytes, subject: "blob \(digest)")
        }
    }

    /// A stream of this compressor's bytes, sent by a client, as the blob `digest`'s bytes.
    func decompressing(_ body: BlobBody, for digest: Digest) -> BlobBody {
        switch self {
        case .identity: return body
        case .zstd: return body.zstdDecompressed(expectedSize: digest.sizeBytes, subject: "blob \(digest)")
        }
    }

    /// The blob's bytes `body` (from `offset`) compressed for a client.
    func compressing(_ body: BlobBody, uncompressedSize: Int64) -> BlobBody {
        switch self {
        case .identity: return body
        case .zstd: return body.zstdCompressed(uncompressedSize: uncompressedSize)
        }
    }

    func compress(_ data: Data) throws(StrataError) -> Data {
        switch self {
        case .identity: return data
        case .zstd: return try ZstdCompressor.compress(data)
        }
    }

    /// The most bytes a client may send for a blob of `uncompressedSize` bytes.
    func maximumWireSize(ofUncompressed uncompressedSize: Int64) -> Int64 {
        switch self {
        case .identity: return uncompressedSize
        case .zstd: return Zstd.maximumCompressedSize(ofUncompressed: uncompressedSize)
        }
    }
}
