import Foundation
import GRPCCore
import NIOCore
import StrataActionCache
import StrataAPI
import StrataCore
@testable import StrataServer
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// A store that remembers the largest blob it was asked to read (`read` or `readBatch`), so a test can
/// check that no read was sized by a client past a limit.
final class ReadRecordingBlobStore: BlobStore {
    let base: any BlobStore
    private let reads = Mutex<(count: Int, largest: Int64)>((0, 0))

    init(_ base: any BlobStore) { self.base = base }

    var readCount: Int { reads.withLock { $0.count } }
    var largestRead: Int64 { reads.withLock { $0.largest } }

    private func record(_ digests: [Digest]) {
        reads.withLock { reads in
            reads.count += digests.count
            reads.largest = digests.reduce(reads.largest) { max($0, $1.sizeBytes) }
        }
    }

    func findMissing(_ digests: [Digest]) async throws -> [Digest] { try await base.findMissing(digests) }

    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        record([digest])
        return try await base.read(digest, offset: offset, limit: limit)
    }

    func write(_ digest: Digest, body: BlobBody) async throws { try await base.write(digest, body: body) }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }

    func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        record(digests)
        return await base.readBatch(digests)
    }
}

/// A store whose every call ends in a `CancellationError`, as a backend call does when its task is cancelled.
struct CancellingBlobStore: BlobStore {
    func findMissing(_ digests: [Digest]) async throws -> [Digest] { throw CancellationError() }
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody { throw CancellationError() }
    func write(_ digest: Digest, body: BlobBody) async throws { throw CancellationError() }
    func delete(_ digests: [Digest]) async throws { throw CancellationError() }
}

/// A store whose `write` takes nothing from the body until `release` is called, like a backend that is
/// slow to accept an upload.
final class StalledWriteBlobStore: BlobStore {
    let base = LRUBlobStore(capacityBytes: 16 << 20)
    private let gate = AsyncStream<Void>.makeStream()

    func release() { gate.continuation.finish() }

    func findMissing(_ digests: [Digest]) async throws -> [Digest] { try await base.findMissing(digests) }
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await base.read(digest, offset: offset, limit: limit)
    }
    func write(_ digest: Digest, body: BlobBody) async throws {
        for await _ in gate.stream {}
        try await base.write(digest, body: body)
    }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }
}

func directoryBlob(files: [(String, Digest)] = [], directories: [(String, ProtoDigest)]) -> Blob {
    let message = Build_Bazel_Remote_Execution_V2_Directory.with {
        $0.files = files.map { name, digest in .with { $0.name = name; $0.digest = digest.proto } }
        $0.directories = directories.map { name, digest in .with { $0.name = name; $0.digest = digest } }
    }
    return Blob(try! message.serializedData())
}

@Suite struct RequestHardeningTests {
    // MARK: Directory walks sized by clients

    @Test func getTreeWithChildSizesSummingPastInt64MaxIsRefusedAndTheServerLives() async throws {
        let store = LRUBlobStore(capacityBytes: 16 << 20)
        let instance = Instance(name: "", cas: .init(store: store), byteStream: .init(store: store))
        try await withServer([instance]) { clients in
            let root = directoryBlob(directories: [
                ("a", protoDigest(Blob.random(size: 10).digest.hash, .max)),
                ("b", protoDigest(Blob.random(size: 10).digest.hash, 1)),
            ])
            try await store.write(root.digest, data: root.data)
            let failure = await rpcFailure {
                _ = try await clients.cas.getTree(.with { $0.rootDigest = root.digest.proto }) { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(failure?.code == .invalidArgument)
            #expect(failure?.message.contains("\(Int64.max)") == true)
            // The server still answers.
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [root.digest.proto] })
            #expect(missing.missingBlobDigests.isEmpty)
        }
    }

    @Test func getTreeNeverReadsADirectoryLargerThanTheLimit() async throws {
        let recording = ReadRecordingBlobStore(LRUBlobStore(capacityBytes: 64 << 20))
        let instance = Instance(name: "", cas: .init(store: recording), byteStream: .init(store: recording))
        try await withServer([instance]) { clients in
            // A stored blob one byte over the limit, and a root claiming 2 GiB.
            let large = Blob(Data(repeating: 0x0a, count: Int(DirectoryWalker.defaultMaxDirectoryBytes) + 1))
            try await recording.write(large.digest, data: large.data)
            let claimed = protoDigest(Blob.random(size: 10).digest.hash, 2 << 30)
            for root in [large.digest.proto, claimed] {
                let failure = await rpcFailure {
                    _ = try await clients.cas.getTree(.with { $0.rootDigest = root }) { response in
                        for try await _ in response.messages {}
                    }
                }
                #expect(failure?.code == .invalidArgument)
                #expect(failure?.message.contains(root.hash) == true)
                #expect(failure?.message.contains("\(DirectoryWalker.defaultMaxDirectoryBytes) bytes") == true)
            }
            // A subdirectory that large is refused the same way, after its parent was read.
            let parent = directoryBlob(directories: [("big", large.digest.proto)])
            try await recording.write(parent.digest, data: parent.data)
            let failure = await rpcFailure {
                _ = try await clients.cas.getTree(.with { $0.rootDigest = parent.digest.proto }) { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(failure?.code == .invalidArgument)
            #expect(recording.readCount == 1)
            #expect(recording.largestRead == parent.digest.sizeBytes)
        }
    }

    @Test func completenessCheckNeverReadsARootDirectoryLargerThanTheLimit() async throws {
        let recording = ReadRecordingBlobStore(LRUBlobStore(capacityBytes: 16 << 20))
        var cache = CompletenessCheckingActionCache(LRUActionCache(maxEntries: 10), cas: recording)
        cache.maxDirectoryBytes = 1024
        let large = Blob.random(size: 2048)
        try await recording.write(large.digest, data: large.data)
        let claimed = protoDigest(Blob.random(size: 10).digest.hash, 2 << 30)
        for (index, root) in [large.digest.proto, claimed].enumerated() {
            let action = Blob.random(size: 100 + index).digest
            try await cache.update(action, .with {
                $0.outputDirectories = [.with { $0.path = "out"; $0.rootDirectoryDigest = root }]
            })
            #expect(try await cache.get(action) == nil)
            // Dropped, not just hidden.
            #expect(try await cache.base.get(action) == nil)
        }
        #expect(recording.readCount == 0)

        // A small tree is still walked and found complete.
        let file = Blob.random(size: 30)
        try await recording.write(file.digest, data: file.data)
        let leaf = directoryBlob(files: [("f", file.digest)], directories: [])
        let root = directoryBlob(directories: [("leaf", leaf.digest.proto)])
        for blob in [leaf, root] { try await recording.write(blob.digest, data: blob.data) }
        let action = Blob.random(size: 99).digest
        let result = ActionResult.with { $0.outputDirectories = [.with { $0.path = "out"; $0.rootDirectoryDigest = root.digest.proto }] }
        try await cache.update(action, result)
        #expect(try await cache.get(action) == result)
        #expect(recording.largestRead <= 1024)
    }

    @Test func walkerSumsSizesWithoutOverflowAndBatchesWithinItsLimit() async throws {
        let recording = ReadRecordingBlobStore(LRUBlobStore(capacityBytes: 16 << 20))
        let leaves = (0..<5).map { directoryBlob(files: [("f\($0)", Digest.emptySHA256)], directories: []) }
        for leaf in leaves { try await recording.write(leaf.digest, data: leaf.data) }
        let root = directoryBlob(directories: leaves.enumerated().map { ("d\($0.offset)", $0.element.digest.proto) })
        try await recording.write(root.digest, data: root.data)
        // Each directory fits a batch alone; sizes near Int64.max in the batch limit must not trap.
        for maxBatchBytes in [Int64(1), .max] {
            let walker = DirectoryWalker(
                store: recording, function: .sha256, children: .requireAll, maxDirectoryBytes: .max, maxBatchBytes: maxBatchBytes)
            var batches: [[Digest]] = []
            try await walker.walk(roots: [root.digest]) { entries in batches.append(entries.map(\.digest)) }
            #expect(batches.flatMap { $0 } == [root.digest] + leaves.map(\.digest))
            #expect(batches.count == (maxBatchBytes == 1 ? 6 : 2))
        }
    }

    // MARK: Status codes

    @Test func aCancellationErrorReachesTheClientAsCancelled() async throws {
        let store = CancellingBlobStore()
        let instance = Instance(name: "", cas: .init(store: store), byteStream: .init(store: store))
        try await withServer([instance]) { clients in
            let blob = Blob.random(size: 10)
            let find = await rpcFailure { _ = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [blob.digest.proto] }) }
            #expect(find?.code == .cancelled)
            let read = await rpcFailure { _ = try await clients.byteStream.download("blobs/\(blob.digest)") }
            #expect(read?.code == .cancelled)
            let tree = await rpcFailure {
                _ = try await clients.cas.getTree(.with { $0.rootDigest = blob.digest.proto }) { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(tree?.code == .cancelled)
        }
        #expect(StrataError.from(CancellationError()).code == .cancelled)
    }

    @Test func aMalformedDigestFailsOnlyItsOwnEntryWithoutDigestFunction() async throws {
        try await withServer([memoryInstance()]) { clients in
            let good = Blob.random(size: 100)
            let response = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [
                    .with { $0.digest = protoDigest("zz", 2); $0.data = Data([1, 2]) },
                    .with { $0.digest = protoDigest(String(repeating: "a", count: 32), 2); $0.data = Data([1, 2]) },
                    .with { $0.digest = good.digest.proto; $0.data = good.data },
                ]
            })
            #expect(response.responses.map(\.status.code) == [3, 3, 0])
            #expect(response.responses[0].status.message.contains("zz"))
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [good.digest.proto] })
            #expect(missing.missingBlobDigests.isEmpty)
            let read = try await clients.cas.batchReadBlobs(.with { $0.digests = [protoDigest("zz", 2), good.digest.proto] })
            #expect(read.responses.map(\.status.code) == [3, 0])
            #expect(read.responses[1].data == good.data)
        }
    }

    @Test func aLongResourceNameIsEchoedShortInAnInvalidArgument() async throws {
        try await withServer([memoryInstance()]) { clients in
            let long = String(repeating: "x", count: 64 << 10)
            let name = "\(long)/blobz/0/1"
            let read = await rpcFailure { _ = try await clients.byteStream.download(name) }
            #expect(read?.code == .invalidArgument)
            #expect((read?.message.utf8.count ?? .max) < 1000)
            #expect(read?.message.contains("xxx…(\(name.utf8.count) bytes)") == true)
            let query = await rpcFailure {
                _ = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = "uploads/\(long)" })
            }
            #expect(query?.code == .invalidArgument)
            #expect((query?.message.utf8.count ?? .max) < 1000)
            let instance = await rpcFailure { _ = try await clients.cas.findMissingBlobs(.with { $0.instanceName = long }) }
            #expect(instance?.code == .invalidArgument)
            #expect((instance?.message.utf8.count ?? .max) < 1000)
            let token = await rpcFailure {
                _ = try await clients.cas.getTree(.with {
                    $0.rootDigest = Digest.emptySHA256.proto
                    $0.pageToken = long
                }) { response in for try await _ in response.messages {} }
            }
            #expect(token?.code == .invalidArgument)
            #expect((token?.message.utf8.count ?? .max) < 1000)
            let digest = await rpcFailure {
                _ = try await clients.actionCache.getActionResult(.with { $0.actionDigest = protoDigest(long, 1) })
            }
            #expect(digest?.code == .invalidArgument)
            #expect((digest?.message.utf8.count ?? .max) < 1000)
            let path = await rpcFailure {
                _ = try await clients.actionCache.updateActionResult(.with {
                    $0.actionDigest = Blob.random(size: 5).digest.proto
                    $0.actionResult = .with { $0.outputFiles = [.with { $0.path = long; $0.digest = protoDigest("zz", 1) }] }
                })
            }
            #expect(path?.code == .invalidArgument)
            #expect((path?.message.utf8.count ?? .max) < 1000)
        }
        #expect(StrataError.echo("short") == "short")
        #expect(StrataError.echo(String(repeating: "é", count: 300)) == String(repeating: "é", count: 200) + "…(600 bytes)")
    }

    // MARK: Request size limits

    static func randomDigests(_ count: Int) -> [ProtoDigest] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { index in
            let hash = (0..<4).map { _ in String(generator.next() as UInt64, radix: 16).leftPadded(16) }.joined()
            return protoDigest(hash, Int64(index + 1))
        }
    }

    @Test func aFindMissingBlobsOf100000DigestsIsAnswered() async throws {
        try await withServer([memoryInstance()]) { clients in
            let digests = Self.randomDigests(100_000)
            // The answer (every digest is missing) is as large as the request: over the client's 4 MiB default.
            var options = CallOptions.defaults
            options.maxResponseMessageBytes = 16 << 20
            // grpc-swift-nio-transport's client decodes answers under maxRequestMessageBytes.
            options.maxRequestMessageBytes = 16 << 20
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = digests }, options: options)
            #expect(missing.missingBlobDigests.count == 100_000)
        }
    }

    @Test func aRequestOverTheLimitGetsResourceExhaustedNamingIt() async throws {
        try await withServer([memoryInstance()], maxBatchTotalSizeBytes: 10_000) { clients in
            let general = 10_000 + (1 << 20)
            // FindMissingBlobs: 300,000 digests are over its 16 MiB.
            let find = await rpcFailure {
                _ = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = Self.randomDigests(300_000) })
            }
            #expect(find?.code == .resourceExhausted)
            #expect(find?.message.contains("FindMissingBlobs") == true)
            #expect(find?.message.contains("\(16 << 20) bytes") == true)
            // A batch message over the general limit.
            let blob = Blob.random(size: 2 << 20)
            let update = await rpcFailure {
                _ = try await clients.cas.batchUpdateBlobs(.with {
                    $0.requests = [.with { $0.digest = blob.digest.proto; $0.data = blob.data }]
                })
            }
            #expect(update?.code == .resourceExhausted)
            #expect(update?.message.contains("\(general) bytes") == true)
            // A Write whose second message is over the limit, after a first one that was taken.
            let write = await rpcFailure {
                _ = try await clients.byteStream.write(requestProducer: { writer in
                    try await writer.write(.with {
                        $0.resourceName = "uploads/u/blobs/\(blob.digest)"
                        $0.data = blob.data.prefix(1000)
                    })
                    try await writer.write(.with {
                        $0.writeOffset = 1000
                        $0.data = blob.data.dropFirst(1000)
                    })
                })
            }
            #expect(write?.code == .resourceExhausted)
            #expect(write?.message.contains("Write request message") == true)
            // The server and the connection still serve.
            let small = Blob.random(size: 100)
            let response = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [.with { $0.digest = small.digest.proto; $0.data = small.data }]
            })
            #expect(response.responses.map(\.status.code) == [0])
        }
    }

    @Test func messageLengthsAreFoundWhereverFramesSplitThem() {
        // Messages of 10, 0, 300 and 5 bytes, then one of 1000 (one compressed), against a limit of 500.
        var stream: [UInt8] = []
        for (size, compressed) in [(10, false), (0, false), (300, false), (5, false), (1000, true)] {
            stream.append(compressed ? 1 : 0)
            stream += withUnsafeBytes(of: UInt32(size).bigEndian, Array.init)
            stream += [UInt8](repeating: 7, count: size)
        }
        let oversizedPrefixEnd = 5 + 10 + 5 + 5 + 300 + 5 + 5 + 5
        // Every two-frame split, and frames of a few bytes each.
        let cases = (0...stream.count).map { (split: $0, pieceSize: stream.count) } + [1, 2, 3, 7].map { (split: 0, pieceSize: $0) }
        for (split, pieceSize) in cases {
            do {
                var scanner = MessageLengthScanner()
                var position = 0
                var found: (Int, at: Int)?
                for piece in [Array(stream[..<split]), Array(stream[split...])] {
                    var start = 0
                    while start < piece.count && found == nil {
                        let end = min(start + pieceSize, piece.count)
                        if let size = scanner.firstLength(in: ByteBuffer(bytes: piece[start..<end]), over: 500) {
                            found = (size, position + end - start)
                        }
                        position += end - start
                        start = end
                    }
                }
                #expect(found?.0 == 1000)
                // Found in the piece that completes the prefix, not before.
                #expect((found?.at ?? 0) >= oversizedPrefixEnd)
                #expect((found?.at ?? .max) < oversizedPrefixEnd + pieceSize)
            }
        }
    }

    // MARK: ByteStream Write

    @Test func aChunkTheStoreDidNotTakeIsNotCommitted() async throws {
        let store = StalledWriteBlobStore()
        let registry = InstanceRegistry([Instance(name: "", cas: .init(store: store), byteStream: .init(store: store))])
        let uploads = UploadRegistry()
        let service = ByteStreamService(registry: registry, uploads: uploads)
        let blob = Blob.random(size: 1000)
        let resource = "uploads/u1/blobs/\(blob.digest)"
        let (requests, sender) = AsyncThrowingStream<Google_Bytestream_WriteRequest, any Error>.makeStream()
        sender.yield(.with {
            $0.resourceName = resource
            $0.data = blob.data.prefix(400)
        })
        let write = Task {
            try await withServerContextRPCCancellationHandle { handle in
                let context = ServerContext(
                    descriptor: ByteStream.Method.Write.descriptor, remotePeer: "test", localPeer: "test", cancellation: handle)
                _ = try await service.write(request: StreamingServerRequest(metadata: [:], messages: RPCAsyncSequence(wrapping: requests)), context: context)
            }
        }
        // The store takes nothing, so the handler waits in `send` with the first chunk until cancelled.
        let name = try ResourceName.parseWrite(resource)
        var waited = 0
        while uploads.count == 0 && waited < 1000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        try await Task.sleep(for: .milliseconds(100))
        write.cancel()
        let outcome = await write.result
        #expect(throws: (any Error).self) { try outcome.get() }
        #expect(uploads.committedSize(name) == 0)
        let status = try await service.queryWriteStatus(
            request: ServerRequest(metadata: [:], message: .with { $0.resourceName = resource }),
            context: ServerContext(
                descriptor: ByteStream.Method.QueryWriteStatus.descriptor, remotePeer: "test", localPeer: "test",
                cancellation: .init()))
        #expect(try status.message.committedSize == 0)
        // The upload resumes from what the store took, and the blob verifies.
        store.release()
        let (resumed, resumedSender) = AsyncThrowingStream<Google_Bytestream_WriteRequest, any Error>.makeStream()
        resumedSender.yield(.with {
            $0.resourceName = resource
            $0.writeOffset = 0
            $0.data = blob.data
            $0.finishWrite = true
        })
        resumedSender.finish()
        let response = try await service.write(
            request: StreamingServerRequest(metadata: [:], messages: RPCAsyncSequence(wrapping: resumed)),
            context: ServerContext(
                descriptor: ByteStream.Method.Write.descriptor, remotePeer: "test", localPeer: "test", cancellation: .init()))
        #expect(try response.message.committedSize == 1000)
        #expect(try await store.base.readAll(blob.digest) == blob.data)
        sender.finish()
    }
}

private extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
