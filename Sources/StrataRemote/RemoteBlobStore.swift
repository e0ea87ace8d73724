import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Logging
import StrataAPI
import StrataCore
import StrataStorage
import Synchronization

typealias ProtoDigest = Build_Bazel_Remote_Execution_V2_Digest
typealias CASClient = Build_Bazel_Remote_Execution_V2_ContentAddressableStorage.Client<HTTP2ClientTransport.Posix>
typealias ByteStreamClient = Google_Bytestream_ByteStream.Client<HTTP2ClientTransport.Posix>

/// One gRPC channel to another REAPI server, shared by the remote storage and action cache: the
/// address, the instance name, per-call deadlines, and retries of idempotent calls with backoff.
///
/// `run()` keeps the channel's connections; the server runs it as a background service.
public final class RemoteChannel: Sendable {
    public struct Options: Sendable {
        public var instanceName = ""
        public var retries = 3
        public var maxBackoff: Duration = .seconds(64)
        public var requestTimeout: Duration? = nil
        public init() {}
    }

    public let endpoint: String
    public let options: Options
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>
    private let makeTransport: @Sendable () throws -> HTTP2ClientTransport.Posix
    private let state: Mutex<(client: Client, shutDown: Bool)>
    /// Clients that replaced a silent one, for `run()` to run.
    private let replacements = AsyncStream<Client>.makeStream()

    /// The client calls go through now.
    var client: Client { state.withLock { $0.client } }
    /// `url` is `grpc://HOST:PORT`, `http://HOST:PORT` or `HOST:PORT` (TLS is not supported yet).
    public init(url: String, options: Options) throws(StrataError) {
        var address = url
        for scheme in ["grpc://", "http://"] where address.hasPrefix(scheme) { address.removeFirst(scheme.count) }
        if address.hasPrefix("https://") || address.hasPrefix("grpcs://") {
            throw .invalidArgument("\(url): TLS to a remote server is not supported by Strata yet")
        }
        while address.hasSuffix("/") { address.removeLast() }
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
              (1...65535).contains(port), colon > address.startIndex else {
            throw .invalidArgument("\(url): expected grpc://HOST:PORT")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.http2.targetWindowSize = 8 << 20
        let makeTransport: @Sendable () throws -> HTTP2ClientTransport.Posix = { [config, host] in
            try HTTP2ClientTransport.Posix(target: .dns(host: host, port: port), transportSecurity: .plaintext, config: config)
        }
        let transport: HTTP2ClientTransport.Posix
        do {
            transport = try makeTransport()
        } catch {
            throw .invalidArgument("\(url): \(error)")
        }
        self.endpoint = "\(host):\(port)"
        self.options = options
        self.makeTransport = makeTransport
        self.state = Mutex((GRPCClient(transport: transport), false))
    }

    /// Keeps the channel open until `shutdown()`; requests made before it starts wait for it.
    public func run() async throws {
        // Each client runs until replaced (then it closes once its calls are over) or shut down.
        try await withThrowingDiscardingTaskGroup { group in
            let first = client
            group.addTask { try await first.runConnections() }
            for await replacement in replacements.stream {
                group.addTask { try await replacement.runConnections() }
            }
        }
    }

    public func shutdown() {
        let client = state.withLock { state in
            state.shutDown = true
            return state.client
        }
        replacements.continuation.finish()
        client.beginGracefulShutdown()
    }

    /// `silent` got no answer within a call's timeout: its connection may have gone silent for good
    /// (the remote hung, or the network path dropped it without a reset), and HTTP/2 would keep
    /// sending every call into it. Calls move to a new client with a new connection; the old one
    /// closes once its calls are over. A remote merely slow costs a reconnection.
    func replace(_ silent: Client) {
        let replacement: Client? = state.withLock { state in
            guard state.client === silent, !state.shutDown, let transport = try? makeTransport() else { return nil }
            state.client = GRPCClient(transport: transport)
            return state.client
        }
        guard let replacement else { return }
        replacements.continuation.yield(replacement)
        silent.beginGracefulShutdown()
    }

    /// Whether a failed call timed out on our bound while the client still waited: a silent remote.
    func timedOutSilently(_ error: any Error) -> Bool {
        guard (error as? RPCError)?.code == .deadlineExceeded else { return false }
        return RequestDeadline.remaining.map { $0 > .zero } ?? true
    }

    /// A call that takes longer has hung (the remote accepted it and went silent) when neither
    /// `requestTimeout` nor the client's deadline bounds it sooner. Calls move at most a batch or a
    /// read chunk (a few MiB), so this is generous.
    public static let defaultCallTimeout: Duration = .seconds(20)

    /// Options of a unary or ranged call: the configured timeout (else `defaultCallTimeout`),
    /// shortened to the client's deadline.
    var callOptions: CallOptions {
        var callOptions = CallOptions.defaults
        callOptions.timeout = RequestDeadline.bounded(options.requestTimeout ?? Self.defaultCallTimeout)
        return callOptions
    }

    /// Options of a streamed upload, whose length has no bound: only the configured timeout and the
    /// client's deadline apply.
    var streamingCallOptions: CallOptions {
        var callOptions = CallOptions.defaults
        callOptions.timeout = RequestDeadline.bounded(optional: options.requestTimeout)
        return callOptions
    }

    /// Runs an idempotent call, retrying it with backoff when the remote answers UNAVAILABLE (the one
    /// status the gRPC and REAPI specs call transient), within `maxBackoff` pauses and the client's
    /// deadline; maps the final error. Anything else, RESOURCE_EXHAUSTED ("too large") and timeouts
    /// included, would fail again the same way.
    func call<Value: Sendable>(_ name: String, _ body: @Sendable (Client) async throws -> Value) async throws -> Value {
        let policy = RetryPolicy(
            maxAttempts: options.retries + 1, baseDelay: .milliseconds(100), maxDelay: options.maxBackoff,
            budget: options.requestTimeout ?? Self.defaultCallTimeout)
        do {
            return try await policy.run(isTransient: { ($0 as? RPCError)?.code == .unavailable }) { _ in
                let client = self.client
                do {
                    return try await body(client)
                } catch {
                    if timedOutSilently(error) { replace(client) }
                    throw error
                }
            }
        } catch let error as RPCError {
            throw mapped(error, name)
        }
    }

    func mapped(_ error: RPCError, _ name: String) -> StrataError {
        if error.code == .deadlineExceeded {
            // Our own call deadline passed: the remote hung, which the client is told as for any
            // backend that cannot serve now (its own deadline, if that was it, has passed anyway).
            return .unavailable("remote \(endpoint): \(name) got no answer in time: \(error.message)")
        }
        // Both sides number their codes as google.rpc.Code does.
        let code = StrataError.Code(rawValue: error.code.rawValue) ?? .unknown
        return StrataError(code, "remote \(endpoint): \(name): \(error.message)")
    }
}

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

    public var endpoint: String { channel.endpoint }
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
        var missing: [Digest] = []
        // 10k digests are ~1 MiB of request: well under any server's message limit.
        for start in stride(from: 0, to: unique.count, by: 10_000) {
            let part = Array(unique[start..<min(unique.count, start + 10_000)])
            let response = try await call("FindMissingBlobs") { cas, _ in
                try await cas.findMissingBlobs(.with {
                    $0.instanceName = self.instanceName
                    $0.blobDigests = part.map(\.proto)
                    $0.digestFunction = .sha256
                }, options: self.callOptions)
            }
            let byKey = Dictionary(part.map { ($0.wireKey, $0) }, uniquingKeysWith: { first, _ in first })
            missing += response.missingBlobDigests.compactMap { byKey[Digest.WireKey(hash: $0.hash, size: $0.sizeBytes)] }
        }
        return missing
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
        if digest.sizeBytes <= options.maxBatchBytes / 2 {
            let data = try await body.verifying(digest).collect(limit: digest.sizeBytes)
            if case .failure(let error) = await writeBatch([(digest, data)])[0] { throw error }
            return
        }
        let resource = (instanceName.isEmpty ? "" : "\(instanceName)/")
            + "uploads/\(UUID().uuidString.lowercased())/blobs/\(digest.hash)/\(digest.sizeBytes)"
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
        var results = [Result<Data, StrataError>?](repeating: nil, count: digests.count)
        var batches: [[Int]] = [[]]
        var batchBytes: Int64 = 0
        var large: [Int] = []
        for (index, digest) in digests.enumerated() {
            if digest.sizeBytes == 0 { results[index] = .success(Data()); continue }
            if digest.sizeBytes > options.maxBatchBytes / 2 { large.append(index); continue }
            if batchBytes + digest.sizeBytes > options.maxBatchBytes { batches.append([]); batchBytes = 0 }
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
        var results = [Result<Void, StrataError>?](repeating: nil, count: blobs.count)
        var batches: [[Int]] = [[]]
        var batchBytes: Int64 = 0
        var large: [Int] = []
        for (index, blob) in blobs.enumerated() {
            // Never send bytes that do not match their digest: the remote would refuse them anyway,
            // and this way the error is the same whichever path a blob takes.
            if let error = Self.verificationError(blob.digest, blob.data) { results[index] = .failure(error); continue }
            if blob.digest.sizeBytes == 0 { results[index] = .success(()); continue }
            if blob.digest.sizeBytes > options.maxBatchBytes / 2 { large.append(index); continue }
            if batchBytes + blob.digest.sizeBytes > options.maxBatchBytes { batches.append([]); batchBytes = 0 }
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
                        $0.digestFunction = .sha256
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
                $0.digestFunction = .sha256
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
        let resource = (instanceName.isEmpty ? "" : "\(instanceName)/") + "blobs/\(digest.hash)/\(digest.sizeBytes)"
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
    var proto: ProtoDigest {
        .with {
            $0.hash = hash
            $0.sizeBytes = sizeBytes
        }
    }

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
