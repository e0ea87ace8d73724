import Foundation
import GRPCCore
import StrataAPI
import StrataCompression
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

/// ByteStream `compressed-blobs/zstd/…` and the batch calls' compressors, against a real server.
@Suite struct CompressedBlobTests {
    @Test(arguments: [0, 1, 100_000, 3 << 20])
    func compressedWritesAndReadsRoundTrip(size: Int) async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = compressibleBlob(size: size)
            let compressed = try ZstdCompressor.compress(blob.data)
            let committed = try await clients.byteStream.upload(
                "uploads/\(UUID())/compressed-blobs/zstd/\(blob.digest)", compressed, chunkSize: 16 << 10)
            // The empty blob is always present: that Write completes early (-1); the others report the
            // compressed bytes they sent.
            #expect(committed == (size == 0 ? -1 : Int64(compressed.count)))
            #expect(try await clients.byteStream.download("blobs/\(blob.digest)") == blob.data)
            let read = try await clients.byteStream.download("compressed-blobs/zstd/\(blob.digest)")
            #expect(try ZstdDecompressor.decompress(read, expectedSize: Int64(size), subject: "read") == blob.data)
            if size > 1000 { #expect(read.count < size / 2) }
            // read_offset counts uncompressed bytes.
            let offset = Int64(size / 3)
            let tail = try await clients.byteStream.download("compressed-blobs/zstd/\(blob.digest)", offset: offset)
            #expect(try ZstdDecompressor.decompress(tail, expectedSize: Int64(size) - offset, subject: "tail") == blob.data.suffix(from: Int(offset)))
        }
    }

    @Test func compressedReadErrors() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = compressibleBlob(size: 1000)
            _ = try await clients.byteStream.upload("uploads/u/blobs/\(blob.digest)", blob.data)
            let limited = await rpcFailure { _ = try await clients.byteStream.download("compressed-blobs/zstd/\(blob.digest)", limit: 10) }
            #expect(limited?.code == .invalidArgument && limited?.message.contains("read_limit 10") == true)
            let unknown = await rpcFailure { _ = try await clients.byteStream.download("compressed-blobs/lz4/\(blob.digest)") }
            #expect(unknown?.code == .invalidArgument && unknown?.message.contains("lz4") == true)
            let brotli = await rpcFailure { _ = try await clients.byteStream.download("compressed-blobs/brotli/\(blob.digest)") }
            #expect(brotli?.code == .invalidArgument && brotli?.message.contains("brotli") == true)
            let past = await rpcFailure { _ = try await clients.byteStream.download("compressed-blobs/zstd/\(blob.digest)", offset: 1001) }
            #expect(past?.code == .outOfRange)
            let absent = await rpcFailure { _ = try await clients.byteStream.download("compressed-blobs/zstd/\(compressibleBlob(size: 10).digest)") }
            #expect(absent?.code == .notFound)
        }
    }

    @Test func badCompressedWritesAreInvalidArgumentAndStoreNothing() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = compressibleBlob(size: 300_000)
            let frame = try ZstdCompressor.compress(blob.data)
            var corrupt = frame
            corrupt[frame.count / 2] ^= 0x40
            let other = try ZstdCompressor.compress(compressibleBlob(size: 300_000).data)
            let bomb = try ZstdCompressor.compress(Data(count: 64 << 20))
            let cases: [(String, Data, String)] = [
                ("corrupt", corrupt, "zstd data of blob"),
                ("truncated", frame.prefix(frame.count - 10), "truncated"),
                ("trailing garbage", frame + Data("trailing".utf8), "not valid"),
                ("another blob's frame", other, "hash"),
                ("a bomb", bomb, "more than the digest's 300000 bytes"),
                ("not zstd", blob.data.prefix(1000), "not valid"),
            ]
            for (what, data, message) in cases {
                let failure = await rpcFailure {
                    _ = try await clients.byteStream.upload("uploads/\(UUID())/compressed-blobs/zstd/\(blob.digest)", data, chunkSize: 4096)
                }
                #expect(failure?.code == .invalidArgument, "\(what): \(String(describing: failure))")
                #expect(failure?.message.contains(message) == true, "\(what): \(String(describing: failure))")
            }
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [blob.digest.proto] })
            #expect(missing.missingBlobDigests.count == 1)
            let unknown = await rpcFailure {
                _ = try await clients.byteStream.upload("uploads/x/compressed-blobs/snappy/\(blob.digest)", frame)
            }
            #expect(unknown?.code == .invalidArgument && unknown?.message.contains("snappy") == true)
            #expect(clients.server.uploads.count == 0)
        }
    }

    @Test func compressedWriteResumesInCompressedBytesAndCompletesEarlyWithMinusOne() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = compressibleBlob(size: 2 << 20)
            let frame = try ZstdCompressor.compress(blob.data)
            let resource = "uploads/\(UUID())/compressed-blobs/zstd/\(blob.digest)"
            let half = frame.count / 2
            let first = try await clients.byteStream.upload(resource, frame.prefix(half), chunkSize: 8192, finish: false)
            #expect(first == Int64(half))
            let status = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = resource })
            #expect(status.committedSize == Int64(half) && !status.complete)
            // The same upload id uncompressed is another upload.
            let plain = await rpcFailure {
                _ = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = resource.replacingOccurrences(of: "compressed-blobs/zstd", with: "blobs") })
            }
            #expect(plain?.code == .notFound)
            let done = try await clients.byteStream.upload(resource, frame.suffix(from: half), offset: Int64(half), chunkSize: 8192)
            #expect(done == Int64(frame.count))
            let complete = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = resource })
            #expect(complete.complete && complete.committedSize == -1)
            #expect(try await clients.byteStream.download("blobs/\(blob.digest)") == blob.data)

            // Stored: another compressed Write completes early with committed_size -1.
            let early = try await clients.byteStream.write(requestProducer: { writer in
                try await writer.write(.with {
                    $0.resourceName = "uploads/\(UUID())/compressed-blobs/zstd/\(blob.digest)"
                    $0.data = frame.prefix(1000)
                })
            }).committedSize
            #expect(early == -1)
        }
    }

    @Test func batchCallsCompressAndDecompressPerBlob() async throws {
        try await withServer([memoryInstance()]) { clients in
            let small = compressibleBlob(size: 5000), empty = Blob(Data()), plain = compressibleBlob(size: 700)
            let bad = compressibleBlob(size: 4000)
            let update = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [
                    .with { $0.digest = small.digest.proto; $0.data = try! ZstdCompressor.compress(small.data); $0.compressor = .zstd },
                    .with { $0.digest = empty.digest.proto; $0.data = try! ZstdCompressor.compress(empty.data); $0.compressor = .zstd },
                    .with { $0.digest = plain.digest.proto; $0.data = plain.data },
                    // Another blob's frame, a bomb, and an unsupported compressor: per-blob INVALID_ARGUMENT.
                    .with { $0.digest = bad.digest.proto; $0.data = try! ZstdCompressor.compress(small.data.prefix(4000)); $0.compressor = .zstd },
                    .with { $0.digest = bad.digest.proto; $0.data = try! ZstdCompressor.compress(Data(count: 1 << 20)); $0.compressor = .zstd },
                    .with { $0.digest = bad.digest.proto; $0.data = bad.data; $0.compressor = .deflate },
                ]
            })
            #expect(update.responses.map(\.status.code) == [0, 0, 0, 3, 3, 3])
            #expect(update.responses[4].status.message.contains("more than the digest's 4000 bytes"))
            #expect(update.responses[5].status.message.contains("DEFLATE"))
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [bad.digest.proto] })
            #expect(missing.missingBlobDigests.count == 1)

            let read = try await clients.cas.batchReadBlobs(.with {
                $0.digests = [small.digest.proto, plain.digest.proto, empty.digest.proto, bad.digest.proto]
                $0.acceptableCompressors = [.zstd]
            })
            #expect(read.responses.map(\.status.code) == [0, 0, 0, 5])
            for (response, blob) in zip(read.responses.prefix(3), [small, plain, empty]) {
                #expect(response.compressor == .zstd)
                #expect(try ZstdDecompressor.decompress(response.data, expectedSize: blob.digest.sizeBytes, subject: "r") == blob.data)
            }
            let identity = try await clients.cas.batchReadBlobs(.with {
                $0.digests = [small.digest.proto]
                $0.acceptableCompressors = [.identity]
            })
            #expect(identity.responses[0].compressor == .identity && identity.responses[0].data == small.data)
        }
    }

    @Test func batchUpdateCountsCompressedBlobsAtTheirUncompressedSize() async throws {
        try await withServer([memoryInstance()], maxBatchTotalSizeBytes: 100_000) { clients in
            let blob = compressibleBlob(size: 200_000)
            let failure = await rpcFailure {
                _ = try await clients.cas.batchUpdateBlobs(.with {
                    $0.requests = [.with { $0.digest = blob.digest.proto; $0.data = try! ZstdCompressor.compress(blob.data); $0.compressor = .zstd }]
                })
            }
            #expect(failure?.code == .invalidArgument && failure?.message.contains("200000 bytes uncompressed") == true)
        }
    }

    @Test func capabilitiesListZstd() async throws {
        try await withServer([memoryInstance()]) { clients in
            let capabilities = try await clients.capabilities.getCapabilities(.init()).cacheCapabilities
            #expect(capabilities.supportedCompressors == [.zstd])
            #expect(capabilities.supportedBatchUpdateCompressors == [.zstd])
        }
    }
}
