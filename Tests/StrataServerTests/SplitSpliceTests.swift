import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataAuth
import StrataChunking
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

/// A chunker with small chunks, so that a few MiB make dozens of them.
let testChunker = FastCDC2020(try! FastCDC2020Parameters(averageSize: 64 << 10))

func chunkingInstance(_ name: String = "", store: any BlobStore = LRUBlobStore(capacityBytes: 256 << 20), readOnly: Bool = false) -> Instance {
    var instance = Instance(name: name, cas: .init(store: store, readOnly: readOnly), byteStream: .init(store: store, readOnly: readOnly))
    instance[Instance.BlobChunking.self] = testChunker
    return instance
}

/// A backend whose copy of some blobs is damaged: reads of them serve the bytes with one bit flipped.
final class DamagedCopies: BlobStore {
    let base: any BlobStore
    let damaged: Set<Digest>

    init(_ base: any BlobStore, damaged: Set<Digest>) {
        self.base = base
        self.damaged = damaged
    }

    func findMissing(_ digests: [Digest]) async throws -> [Digest] { try await base.findMissing(digests) }
    func write(_ digest: Digest, body: BlobBody) async throws { try await base.write(digest, body: body) }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }

    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        var data = try await base.read(digest, offset: offset, limit: limit).collect(limit: digest.sizeBytes)
        if damaged.contains(digest), !data.isEmpty { data[data.startIndex] ^= 1 }
        return BlobBody(data: data)
    }
}

@Suite struct SplitSpliceTests {
    @Test func capabilitiesAdvertiseChunkingOnlyWhereItIsOn() async throws {
        let instances = [chunkingInstance(), memoryInstance("plain"), chunkingInstance("archive", readOnly: true)]
        try await withServer(instances) { clients in
            let on = try await clients.capabilities.getCapabilities(.with { $0.instanceName = "" }).cacheCapabilities
            #expect(on.splitBlobSupport && on.spliceBlobSupport)
            #expect(on.hasFastCdc2020Params && on.fastCdc2020Params.avgChunkSizeBytes == 64 << 10 && on.fastCdc2020Params.seed == 0)
            let off = try await clients.capabilities.getCapabilities(.with { $0.instanceName = "plain" }).cacheCapabilities
            #expect(!off.splitBlobSupport && !off.spliceBlobSupport && !off.hasFastCdc2020Params)
            let readOnly = try await clients.capabilities.getCapabilities(.with { $0.instanceName = "archive" }).cacheCapabilities
            #expect(readOnly.splitBlobSupport && !readOnly.spliceBlobSupport)
        }
    }

    @Test func chunkingOffAnswersUnimplementedSayingSo() async throws {
        try await withServer([memoryInstance("plain")]) { clients in
            let blob = Blob.random(size: 10)
            let split = await rpcFailure {
                _ = try await clients.cas.splitBlob(.with { $0.instanceName = "plain"; $0.blobDigest = blob.digest.proto })
            }
            #expect(split?.code == .unimplemented && split?.message.contains("chunking is off for instance \"plain\"") == true, "\(String(describing: split))")
            let splice = await rpcFailure {
                _ = try await clients.cas.spliceBlob(.with { $0.instanceName = "plain"; $0.blobDigest = blob.digest.proto })
            }
            #expect(splice?.code == .unimplemented && splice?.message.contains("enable-chunking") == true)
        }
    }

    /// Split a few MiB uploaded whole, then splice the chunks back on another instance.
    @Test func splitAndSpliceRoundTrip() async throws {
        try await withServer([chunkingInstance(), chunkingInstance("other")]) { clients in
            let data = Blob.random(size: 3 << 20 + 12345).data
            let blob = Digest.of(data)
            _ = try await clients.byteStream.upload("uploads/u1/blobs/\(blob.hash)/\(blob.sizeBytes)", data)

            let split = try await clients.cas.splitBlob(.with { $0.blobDigest = blob.proto; $0.chunkingFunction = .fastCdc2020 })
            #expect(split.chunkingFunction == .fastCdc2020)
            let lengths = testChunker.chunkLengths(of: data)
            #expect(lengths.count > 20)
            #expect(split.chunkDigests.map(\.sizeBytes) == lengths.map(Int64.init))
            // Every chunk is stored, and they make up the blob.
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = split.chunkDigests })
            #expect(missing.missingBlobDigests.isEmpty)
            var joined = Data()
            var chunkData: [Data] = []
            for chunk in split.chunkDigests {
                let bytes = try await clients.byteStream.download("blobs/\(chunk.hash)/\(chunk.sizeBytes)")
                chunkData.append(bytes)
                joined.append(bytes)
            }
            #expect(joined == data)
            // A second split finds its chunks stored and answers the same.
            let again = try await clients.cas.splitBlob(.with { $0.blobDigest = blob.proto })
            #expect(again.chunkDigests == split.chunkDigests)

            // Splice on an instance that has only the chunks.
            for (chunk, bytes) in zip(split.chunkDigests, chunkData) {
                _ = try await clients.byteStream.upload("other/uploads/u2/blobs/\(chunk.hash)/\(chunk.sizeBytes)", bytes)
            }
            let before = try await clients.cas.findMissingBlobs(.with { $0.instanceName = "other"; $0.blobDigests = [blob.proto] })
            #expect(before.missingBlobDigests == [blob.proto])
            let spliced = try await clients.cas.spliceBlob(.with {
                $0.instanceName = "other"
                $0.blobDigest = blob.proto
                $0.chunkDigests = split.chunkDigests
                $0.chunkingFunction = .fastCdc2020
            })
            #expect(spliced.blobDigest == blob.proto)
            #expect(try await clients.byteStream.download("other/blobs/\(blob.hash)/\(blob.sizeBytes)") == data)
            // Splicing what is stored is accepted as it is.
            let repeated = try await clients.cas.spliceBlob(.with {
                $0.instanceName = "other"
                $0.blobDigest = blob.proto
                $0.chunkDigests = split.chunkDigests
            })
            #expect(repeated.blobDigest == blob.proto)
        }
    }

    @Test func smallAndEmptyBlobs() async throws {
        try await withServer([chunkingInstance()]) { clients in
            let small = Blob.random(size: 1000)
            _ = try await clients.cas.batchUpdateBlobs(.with { $0.requests = [.with { $0.digest = small.digest.proto; $0.data = small.data }] })
            let one = try await clients.cas.splitBlob(.with { $0.blobDigest = small.digest.proto })
            #expect(one.chunkDigests == [small.digest.proto])
            let empty = try await clients.cas.splitBlob(.with { $0.blobDigest = Digest.emptySHA256.proto })
            #expect(empty.chunkDigests.isEmpty)
            let spliced = try await clients.cas.spliceBlob(.with { $0.blobDigest = Digest.emptySHA256.proto })
            #expect(spliced.blobDigest == Digest.emptySHA256.proto)
        }
    }

    /// The list of chunks is bounded like any answer: by the batch limit.
    @Test func aSplitAnswerLargerThanABatchIsRefused() async throws {
        try await withServer([chunkingInstance()], maxBatchTotalSizeBytes: 2048) { clients in
            let data = Blob.random(size: 4 << 20).data
            let blob = Digest.of(data)
            _ = try await clients.byteStream.upload("uploads/u1/blobs/\(blob.hash)/\(blob.sizeBytes)", data)
            let failure = await rpcFailure { _ = try await clients.cas.splitBlob(.with { $0.blobDigest = blob.proto }) }
            #expect(failure?.code == .resourceExhausted && failure?.message.contains("max_batch_total_size_bytes (2048)") == true,
                    "\(String(describing: failure))")
        }
    }

    @Test func splitOfAnAbsentBlobIsNotFound() async throws {
        try await withServer([chunkingInstance()]) { clients in
            let absent = Blob.random(size: 500_000).digest
            let failure = await rpcFailure { _ = try await clients.cas.splitBlob(.with { $0.blobDigest = absent.proto }) }
            #expect(failure?.code == .notFound && failure?.message.contains(absent.hash) == true, "\(String(describing: failure))")
            let malformed = await rpcFailure { _ = try await clients.cas.splitBlob(.with { $0.blobDigest = protoDigest("abc", 3) }) }
            #expect(malformed?.code == .invalidArgument)
        }
    }

    @Test func spliceNamesMissingChunksAndStoresNothing() async throws {
        try await withServer([chunkingInstance()]) { clients in
            let first = Blob.random(size: 70_000), second = Blob.random(size: 80_000)
            _ = try await clients.cas.batchUpdateBlobs(.with { $0.requests = [.with { $0.digest = first.digest.proto; $0.data = first.data }] })
            let whole = Digest.of(first.data + second.data)
            let failure = await rpcFailure {
                _ = try await clients.cas.spliceBlob(.with {
                    $0.blobDigest = whole.proto
                    $0.chunkDigests = [first.digest.proto, second.digest.proto]
                })
            }
            #expect(failure?.code == .notFound, "\(String(describing: failure))")
            #expect(failure?.message.contains(second.digest.hash) == true && failure?.message.contains(first.digest.hash) == false)
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [whole.proto] })
            #expect(missing.missingBlobDigests == [whole.proto])
        }
    }

    @Test func spliceVerifiesTheResultAndStoresNothingOnAMismatch() async throws {
        try await withServer([chunkingInstance()]) { clients in
            let first = Blob.random(size: 70_000), second = Blob.random(size: 80_000)
            _ = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [first, second].map { blob in .with { $0.digest = blob.digest.proto; $0.data = blob.data } }
            })
            // Right sizes, wrong order: the concatenation is another blob.
            let claimed = Digest.of(second.data + first.data)
            let mismatch = await rpcFailure {
                _ = try await clients.cas.spliceBlob(.with {
                    $0.blobDigest = claimed.proto
                    $0.chunkDigests = [first.digest.proto, second.digest.proto]
                })
            }
            #expect(mismatch?.code == .invalidArgument, "\(String(describing: mismatch))")
            #expect(mismatch?.message.contains("hash is \(Digest.of(first.data + second.data).hash)") == true, "\(String(describing: mismatch))")
            #expect(mismatch?.message.contains("do not make up blob_digest \(claimed)") == true)
            #expect(try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [claimed.proto] }).missingBlobDigests == [claimed.proto])

            let badSize = await rpcFailure {
                _ = try await clients.cas.spliceBlob(.with {
                    $0.blobDigest = protoDigest(claimed.hash, 150_001)
                    $0.chunkDigests = [first.digest.proto, second.digest.proto]
                })
            }
            #expect(badSize?.code == .invalidArgument && badSize?.message.contains("add up to 150000 bytes") == true, "\(String(describing: badSize))")
            let badChunk = await rpcFailure {
                _ = try await clients.cas.spliceBlob(.with {
                    $0.blobDigest = claimed.proto
                    $0.chunkDigests = [first.digest.proto, protoDigest("xyz", 80_000)]
                })
            }
            #expect(badChunk?.code == .invalidArgument && badChunk?.message.contains("chunk_digests[1]") == true)
        }
    }

    /// A storage that serves a damaged copy of a chunk: the splice fails and stores nothing; a split of
    /// a damaged blob fails rather than answering chunks that do not make up the blob.
    @Test func damagedCopiesNeverBecomeAnAnswer() async throws {
        let base = LRUBlobStore(capacityBytes: 64 << 20)
        let first = Blob.random(size: 70_000), second = Blob.random(size: 80_000)
        let big = Blob.random(size: 1 << 20)
        for blob in [first, second, big] { try await base.write(blob.digest, data: blob.data) }
        let store = DamagedCopies(base, damaged: [second.digest, big.digest])
        try await withServer([chunkingInstance(store: store)]) { clients in
            let whole = Digest.of(first.data + second.data)
            let splice = await rpcFailure {
                _ = try await clients.cas.spliceBlob(.with {
                    $0.blobDigest = whole.proto
                    $0.chunkDigests = [first.digest.proto, second.digest.proto]
                })
            }
            #expect(splice?.code == .invalidArgument && splice?.message.contains("nothing was stored") == true, "\(String(describing: splice))")
            let stored = try await base.findMissing([whole])
            #expect(stored == [whole])

            let split = await rpcFailure { _ = try await clients.cas.splitBlob(.with { $0.blobDigest = big.digest.proto }) }
            #expect(split?.code == .invalidArgument && split?.message.contains(big.digest.hash) == true, "\(String(describing: split))")
        }
    }

    @Test func readOnlyCASSplitsOnlyWhatIsStoredAndNeverSplices() async throws {
        let store = LRUBlobStore(capacityBytes: 64 << 20)
        let data = Blob.random(size: 1 << 20).data
        let blob = Digest.of(data)
        try await store.write(blob, data: data)
        try await withServer([chunkingInstance("archive", store: store, readOnly: true)]) { clients in
            let split = await rpcFailure { _ = try await clients.cas.splitBlob(.with { $0.instanceName = "archive"; $0.blobDigest = blob.proto }) }
            #expect(split?.code == .notFound && split?.message.contains("read-only") == true, "\(String(describing: split))")
            let splice = await rpcFailure { _ = try await clients.cas.spliceBlob(.with { $0.instanceName = "archive"; $0.blobDigest = blob.proto }) }
            #expect(splice?.code == .permissionDenied)
        }
        // With its chunks stored, the read-only instance answers the split.
        var offset = 0
        for length in testChunker.chunkLengths(of: data) {
            let chunk = data[offset..<(offset + length)]
            try await store.write(Digest.of(chunk), data: Data(chunk))
            offset += length
        }
        try await withServer([chunkingInstance("archive", store: store, readOnly: true)]) { clients in
            let split = try await clients.cas.splitBlob(.with { $0.instanceName = "archive"; $0.blobDigest = blob.proto })
            #expect(split.chunkDigests.count == testChunker.chunkLengths(of: data).count)
        }
    }

    /// The ACL names RPCs: SplitBlob is allowed or not like any read, SpliceBlob like any write.
    @Test func theACLDecidesSplitAndSpliceByName() async throws {
        let reads: Set<String> = ["GetCapabilities", "FindMissingBlobs", "BatchReadBlobs", "BatchUpdateBlobs", "SplitBlob"]
        let settings = AuthorizationSettings(
            method: .none, accessControl: AccessControlList(rules: ["": .entries([.init(requests: reads)])]),
            allowLocalhostRequests: true)
        let server = try StrataServer(
            registry: InstanceRegistry([chunkingInstance()], accessPolicy: AccessPolicy(settings: settings)),
            addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))], eventLoops: 1)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
            let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
            try await withGRPCClient(transport: transport) { client in
                let cas = CASClient(wrapping: client)
                let blob = Blob.random(size: 1000)
                _ = try await cas.batchUpdateBlobs(.with { $0.requests = [.with { $0.digest = blob.digest.proto; $0.data = blob.data }] })
                let split = try await cas.splitBlob(.with { $0.blobDigest = blob.digest.proto })
                #expect(split.chunkDigests == [blob.digest.proto])
                let splice = await rpcFailure {
                    _ = try await cas.spliceBlob(.with { $0.blobDigest = blob.digest.proto; $0.chunkDigests = [blob.digest.proto] })
                }
                #expect(splice?.code == .permissionDenied && splice?.message.contains("may not call SpliceBlob") == true, "\(String(describing: splice))")
            }
            server.beginGracefulShutdown()
            try await group.waitForAll()
        }
    }
}
