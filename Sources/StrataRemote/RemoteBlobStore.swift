import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Logging
import StrataAPI
import StrataCore
import StrataProto
import StrataStorage
import Synchronization

typealias CASClient = Build_Bazel_Remote_Execution_V2_ContentAddressableStorage.Client<HTTP2ClientTransport.Posix>
typealias ByteStreamClient = Google_Bytestream_ByteStream.Client<HTTP2ClientTransport.Posix>

/// Another REAPI server (Strata, BuildGrid, bb-storage…) used as a storage backend, through its CAS
/// and ByteStream services on one gRPC channel.
///
/// - Small blobs travel in BatchReadBlobs / BatchUpdateBlobs requests of at most `maxBatchBytes`;
///   larger ones through ByteStream. Reads of large blobs are pulled in ranged ByteStream reads of
///   `readChunkBytes`, so a slow consumer never makes this server buffer the blob.
/// - Idempotent calls (FindMissingBlobs, reads, batch writes) are retried on UNAVAILABLE up to
///   `retries` times with exponential backoff capped at `maxBackoff`, within the client's deadline; a
///   streamed write is not (its body can be read once). Each call is bounded by `requestTimeout`
///   (else `RemoteChannel.defaultCallTimeout`, streamed writes excepted) and the client's deadline.
/// - REAPI has no delete: `delete` answers UNIMPLEMENTED, so cleanup is run next to the remote server.
public final class RemoteBlobStore: BlobStore {
    public struct Options: Sendable {
        public var channel = RemoteChannel.Options()
        public var maxBatchBytes: Int64 = 2 << 20
        public var readChunkBytes: Int = 2 << 20

        public init() {}
    }

    public let channel: RemoteChannel
    public let options: Options

    public init(url: String, options: Options = Options()) throws(StrataError) {
        self.channel = try RemoteChannel(url: url, options: options.channel)
        self.options = options
    }

    /// A store on a channel shared with others (a client command's action cache); `options.channel`
    /// is not used.
    public init(channel: RemoteChannel, options: Options = Options()) {
        self.channel = channel
        self.options = options
    }

    public var endpoint: String { "\(channel.endpoint)" }

    /// The most data bytes one batch call carries: `maxBatchBytes`, or the peer's smaller limit.
    public func batchLimit() async -> Int64 { await channel.batchLimit(configured: options.maxBatchBytes) }
    private var instanceName: String { channel.options.instanceName }
    private var callOptions: CallOptions { channel.callOptions }

    /// Runs a call with the CAS and ByteStream stubs of the channel's current client.
    private func call<Value: Sendable>(
        _ name: String, _ body: @Sendable (CASClient, ByteStreamClient) async throws -> Value
    ) async throws -> Value {
        try await channel.call(name) { client in try await body(CASClient(wrapping: client), ByteStreamClient(wrapping: client)) }
    }

    private func mapped(_ error: RPCError, _ name: String) -> StrataError { channel.mapped(error, name) }

    public var maximumBlobSize: Int64? { nil }

    // MARK: BlobStore

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let unique = digests.uniqued()
        var missing = Set<Digest>()
        // One call per digest function (a request names one) and per 10k digests: ~1 MiB of request,
        // well under any server's message limit.
        let parts = Dictionary(grouping: unique, by: \.function).values.flatMap { group in
            stride(from: 0, to: group.count, by: 10_000).map { Array(group[$0..<min(group.count, $0 + 10_000)]) }
        }
        for part in parts {
            let response = try await call("FindMissingBlobs") { cas, _ in
                try await cas.findMissingBlobs(.with {
                    $0.instanceName = self.instanceName
                    $0.blobDigests = part.map(\.proto)
                    $0.digestFunction = part[0].function.proto
                }, options: self.callOptions)
            }
            let byKey = Dictionary(part.map { ($0.wireKey, $0) }, uniquingKeysWith: { first, _ in first })
            for item in response.missingBlobDigests {
                if let digest = byKey[Digest.WireKey(hash: item.hash, size: item.sizeBytes)] { missing.insert(digest) }
            }
        }
        // In the order asked, whatever the grouping.
        return unique.filter(missing.contains)
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        if range.isEmpty {
            // Nothing to fetch, but the answer still depends on the blob being there.
            guard try await findMissing([digest]).isEmpty else { throw StrataError.notFound("blob \(digest) is not in the CAS") }
            return .empty
        }
        // The first chunk is fetched now so that an absent blob is NOT_FOUND here, not mid-stream.
        let chunk = Int64(options.readChunkBytes)
        let first = try await readRange(digest, from: range.lowerBound, count: min(chunk, Int64(range.count)))
        return .ranged(range, chunkSize: chunk, first: first) { offset, count in
            try await self.readRange(digest, from: offset, count: count)
        }
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        if digest.sizeBytes == 0 {
            for try await chunk in body.verifying(digest) where !chunk.isEmpty {}
            return
        }
        let maxBatchBytes = await batchLimit()
        if digest.sizeBytes <= maxBatchBytes / 2 {
            let data = try await body.verifying(digest).collect(limit: digest.sizeBytes)
            if case .failure(let error) = await writeBatch([(digest, data)])[0] { throw error }
            return
        }
        let resource = (instanceName.isEmpty ? "" : "\(instanceName)/")
            + "uploads/\(UUID().uuidString.lowercased())/blobs/\(digest.resourceNamePath)"
        let verified = body.verifying(digest)
        // When the body fails (bad bytes, a client that went away), that error is the answer, not
        // the "stream closed" the RPC then ends with.
        let bodyError = Mutex<(any Error)?>(nil)
        let response: Google_Bytestream_WriteResponse
        let client = channel.client
        do {
            response = try await ByteStreamClient(wrapping: client).write(options: channel.streamingCallOptions, requestProducer: { writer in
                var offset: Int64 = 0
                var iterator = verified.makeAsyncIterator()
                while true {
                    let next: Data?
                    do {
                        next = try await iterator.next()
                    } catch {
                        bodyError.withLock { $0 = error }
                        throw error
                    }
                    guard let chunk = next else { break }
                    // The last chunk is known only once the body has ended, which it does after the
                    // verifying body checked the whole blob: only then is finish_write sent.
                    for piece in chunk.split(maxLength: 1 << 20) {
                        try await writer.write(.with {
                            $0.resourceName = offset == 0 ? resource : ""
                            $0.writeOffset = offset
                            $0.data = piece
                        })
                        offset += Int64(piece.count)
                    }
                }
                try await writer.write(.with {
                    $0.resourceName = offset == 0 ? resource : ""
                    $0.writeOffset = offset
                    $0.finishWrite = true
                })
            })
        } catch {
            if let failure = bodyError.withLock({ $0 }) { throw failure }
            if channel.timedOutSilently(error) { channel.replace(client) }
            if let error = error as? RPCError { throw mapped(error, "ByteStream.Write") }
            throw error
        }
        guard response.committedSize == digest.sizeBytes || response.committedSize == -1 else {
            throw StrataError.internal(
                "remote storage \(endpoint): wrote \(digest) but the server committed \(response.committedSize) bytes")
        }
    }

    public func delete(_ digests: [Digest]) async throws {
        throw StrataError.unimplemented(
            "remote storage \(endpoint): the Remote Execution API has no delete; run cleanup on that server")
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        let maxBatchBytes = await batchLimit()
        var results = [Result<Data, StrataError>?](repeating: nil, count: digests.count)
        var batches: [[Int]] = [[]]
        var batchBytes: Int64 = 0
        var large: [Int] = []
        // A request names one digest function: a batch holds digests of one function.
        var batchFunction = DigestFunction.sha256
        for index in Self.groupedByFunction(digests) {
            let digest = digests[index]
            if digest.sizeBytes == 0 { results[index] = .success(Data()); continue }
            if digest.sizeBytes > maxBatchBytes / 2 { large.append(index); continue }
            if batchBytes + digest.sizeBytes > maxBatchBytes || digest.function != batchFunction {
                batches.append([]); batchBytes = 0; batchFunction = digest.function
            }
            batches[batches.count - 1].append(index)
            batchBytes += digest.sizeBytes
        }
        // Sub-batches run side by side, like the large blobs: one remote round trip, not one per batch.
        let filled = batches.filter { !$0.isEmpty }
        let answers = await concurrentMap(filled, maxConcurrency: 4) { batch in
            try await self.batchRead(batch.map { digests[$0] })
        }
        for (batch, answer) in zip(filled, answers) {
            switch answer {
            case .success(let items): for (index, item) in zip(batch, items) { results[index] = item }
            case .failure(let error): for index in batch { results[index] = .failure(error) }
            }
        }
        let largeResults = await concurrentMap(large.map { digests[$0] }, maxConcurrency: 4) { digest in
            try await self.readAll(digest)
        }
        for (index, result) in zip(large, largeResults) { results[index] = result }
        return results.map { $0 ?? .failure(.internal("a batch item got no result")) }
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        let maxBatchBytes = await batchLimit()
        var results = [Result<Void, StrataError>?](repeating: nil, count: blobs.count)
        var batches: [[Int]] = [[]]
        var batchBytes: Int64 = 0
        var large: [Int] = []
        // A request names one digest function: a batch holds blobs of one function.
        var batchFunction = DigestFunction.sha256
        for index in Self.groupedByFunction(blobs.map(\.digest)) {
            let blob = blobs[index]
            // Never send bytes that do not match their digest: the remote would refuse them anyway,
            // and this way the error is the same whichever path a blob takes.
            if let error = Self.verificationError(blob.digest, blob.data) { results[index] = .failure(error); continue }
            if blob.digest.sizeBytes == 0 { results[index] = .success(()); continue }
            if blob.digest.sizeBytes > maxBatchBytes / 2 { large.append(index); continue }
            if batchBytes + blob.digest.sizeBytes > maxBatchBytes || blob.digest.function != batchFunction {
                batches.append([]); batchBytes = 0; batchFunction = blob.digest.function
            }
            batches[batches.count - 1].append(index)
            batchBytes += blob.digest.sizeBytes
        }
        for batch in batches where !batch.isEmpty {
            do {
                let response = try await call("BatchUpdateBlobs") { cas, _ in
                    try await cas.batchUpdateBlobs(.with {
                        $0.instanceName = self.instanceName
                        $0.requests = batch.map { index in .with {
                            $0.digest = blobs[index].digest.proto
                            $0.data = blobs[index].data
                        } }
                        $0.digestFunction = blobs[batch[0]].digest.function.proto
                    }, options: self.callOptions)
                }
                var byKey: [Digest.WireKey: Google_Rpc_Status] = [:]
                for item in response.responses { byKey[Digest.WireKey(hash: item.digest.hash, size: item.digest.sizeBytes)] = item.status }
                for index in batch {
                    let digest = blobs[index].digest
                    guard let status = byKey[digest.wireKey] else {
                        results[index] = .failure(.internal("remote storage \(endpoint): no answer for \(digest) in BatchUpdateBlobs"))
                        continue
                    }
                    results[index] = status.code == 0 ? .success(()) : .failure(StrataError(
                        StrataError.Code(rawValue: Int(status.code)) ?? .unknown, "remote storage \(endpoint): \(status.message)"))
                }
            } catch {
                for index in batch { results[index] = .failure(StrataError.from(error)) }
            }
        }
        let largeResults = await concurrentMap(large.map { blobs[$0] }, maxConcurrency: 4) { blob in
            try await self.write(blob.digest, body: BlobBody(data: blob.data))
        }
        for (index, result) in zip(large, largeResults) { results[index] = result }
        return results.map { $0 ?? .failure(.internal("a batch item got no result")) }
    }

    // MARK: Helpers

    /// One BatchReadBlobs call: each digest's bytes (verified) or the remote's status for it.
    private func batchRead(_ wanted: [Digest]) async throws -> [Result<Data, StrataError>] {
        let response = try await call("BatchReadBlobs") { cas, _ in
            try await cas.batchReadBlobs(.with {
                $0.instanceName = self.instanceName
                $0.digests = wanted.map(\.proto)
                $0.digestFunction = wanted[0].function.proto
            }, options: self.callOptions)
        }
        var byKey: [Digest.WireKey: Build_Bazel_Remote_Execution_V2_BatchReadBlobsResponse.Response] = [:]
        for item in response.responses { byKey[Digest.WireKey(hash: item.digest.hash, size: item.digest.sizeBytes)] = item }
        return wanted.map { digest in
            guard let item = byKey[digest.wireKey] else {
                return .failure(.internal("remote storage \(endpoint): no answer for \(digest) in BatchReadBlobs"))
            }
            if item.status.code != 0 {
                return .failure(StrataError(StrataError.Code(rawValue: Int(item.status.code)) ?? .unknown,
                                            "remote storage \(endpoint): \(item.status.message)"))
            }
            // Damaged bytes from the remote: DATA_LOSS, which `VerifyingBlobStore` reports as NOT_FOUND.
            if let error = Self.verificationError(digest, item.data) { return .failure(StrataError(.dataLoss, error.message)) }
            return .success(item.data)
        }
    }

    private func readRange(_ digest: Digest, from offset: Int64, count: Int64) async throws -> Data {
        let resource = (instanceName.isEmpty ? "" : "\(instanceName)/") + "blobs/\(digest.resourceNamePath)"
        let data = try await call("ByteStream.Read") { _, byteStream in
            try await byteStream.read(.with {
                $0.resourceName = resource
                $0.readOffset = offset
                $0.readLimit = count
            }, options: self.callOptions) { response in
                var data = Data()
                for try await message in response.messages { data.append(message.data) }
                return data
            }
        }
        guard data.count == count else {
            throw StrataError(.dataLoss, "size mismatch: remote storage \(endpoint) sent \(data.count) bytes of \(digest) at \(offset), expected \(count)")
        }
        return data
    }

    /// The indices of `digests`, those of one digest function together (SHA-256 first), each group in
    /// the original order.
    private static func groupedByFunction(_ digests: [Digest]) -> [Int] {
        digests.indices.sorted { (digests[$0].function.rawValue, $0) < (digests[$1].function.rawValue, $1) }
    }

    private static func verificationError(_ digest: Digest, _ data: Data) -> StrataError? {
        do {
            try digest.verify(data)
            return nil
        } catch {
            return StrataError.from(error)
        }
    }
}

extension Digest {
    /// A digest as the remote's answers name it (hash text and size, not validated): matches an answer's
    /// items to the digests asked for.
    struct WireKey: Hashable {
        var hash: String
        var size: Int64
    }

    var wireKey: WireKey { WireKey(hash: hash, size: sizeBytes) }
}

extension Data {
    func split(maxLength: Int) -> [Data] {
        guard count > maxLength else { return [self] }
        return stride(from: startIndex, to: endIndex, by: maxLength).map { self[$0..<Swift.min($0 + maxLength, endIndex)] }
    }
}
