import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import StrataAPI
import StrataCore
import StrataProto
import SwiftProtobuf

typealias CASMethod = Build_Bazel_Remote_Execution_V2_ContentAddressableStorage.Method
typealias ByteStreamMethod = Google_Bytestream_ByteStream.Method

/// The clients of one benchmark and the per-scenario set-up and operation.
///
/// The operations do as little as a client can: requests that do not change are serialized once, new
/// blobs cost a block or two of hashing (see `BlobFactory`), and answers are checked on their wire bytes
/// (see `Wire`). Whatever the client saves, the server it shares the machine with can use.
struct Clients: Sendable {
    let grpc: GRPCClient<HTTP2ClientTransport.Posix>
    let cas: CASClient
    let byteStream: ByteStreamClient
    let actionCache: ActionCacheClient
    let capabilities: CapabilitiesClient
    let options: BenchmarkOptions

    var itemsPerOperation: Int {
        switch options.scenario {
        case .findMissingPresent, .findMissingMissing, .batchUpdate, .batchRead: options.batch
        case .byteStreamWrite, .byteStreamRead, .actionCache, .bazelMix, .rpcFloor: 1
        }
    }

    var payloadBytesPerOperation: Int64 {
        switch options.scenario {
        case .batchUpdate, .batchRead: Int64(options.batch * options.blobSize)
        case .byteStreamWrite, .byteStreamRead: Int64(options.blobSize)
        case .findMissingPresent, .findMissingMissing, .actionCache, .bazelMix, .rpcFloor: 0
        }
    }

    typealias Operation = @Sendable () async throws -> Void

    /// Uploads what the scenario reads, then returns one operation to repeat.
    func prepare() async throws -> Operation {
        let serial = Serial()
        let instance = options.instanceName
        switch options.scenario {
        case .findMissingPresent:
            let factory = BlobFactory(size: 100)
            let blobs = (0..<options.batch).map { _ in factory.make(serial.next()) }
            for chunk in stride(from: 0, to: blobs.count, by: 500) {
                try await upload(Array(blobs[chunk..<min(chunk + 500, blobs.count)]))
            }
            let request = try PreSerialized(Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with {
                $0.instanceName = instance
                $0.blobDigests = blobs.map(\.digest)
            })
            return {
                let missing = try await findMissing(request)
                guard missing == 0 else { throw BenchmarkError("stored blobs reported missing") }
            }
        case .findMissingMissing:
            let factory = BlobFactory(size: 100)
            let batch = options.batch
            let request = try PreSerialized(Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with {
                $0.instanceName = instance
                $0.blobDigests = (0..<batch).map { _ in factory.make(serial.next()).digest }
            })
            return {
                let missing = try await findMissing(request)
                guard missing == batch else { throw BenchmarkError("absent blobs reported present") }
            }
        case .batchUpdate:
            let factory = BlobFactory(size: options.blobSize)
            let batch = options.batch
            // BatchUpdateBlobsRequest.instance_name = 1; empty, it is left out as protobuf does.
            let header = try PreSerialized(Build_Bazel_Remote_Execution_V2_BatchUpdateBlobsRequest.with {
                $0.instanceName = instance
            }).bytes
            let entryBytes = factory.updateEntrySize
            return {
                // Built per operation (every blob must be new), straight into wire format.
                var bytes = header
                bytes.reserveCapacity(header.count + batch * entryBytes)
                for _ in 0..<batch { factory.appendUpdateEntry(serial.next(), to: &bytes) }
                let summary = try await grpc.unary(
                    request: ClientRequest(message: PreSerialized(bytes: bytes)),
                    descriptor: CASMethod.BatchUpdateBlobs.descriptor,
                    serializer: PreSerializedSerializer(),
                    // BatchUpdateBlobsResponse.responses = 1; Response.status = 2.
                    deserializer: WireSummaryDeserializer(field: 1, statusField: 2),
                    options: .defaults
                ) { try $0.message }
                guard summary.count == batch, summary.failures == 0 else {
                    throw BenchmarkError("BatchUpdateBlobs stored \(summary.count - summary.failures) of \(batch) blobs")
                }
            }
        case .batchRead:
            let factory = BlobFactory(size: options.blobSize)
            let blobs = (0..<options.batch).map { _ in factory.make(serial.next()) }
            try await upload(blobs)
            let request = try PreSerialized(Build_Bazel_Remote_Execution_V2_BatchReadBlobsRequest.with {
                $0.instanceName = instance
                $0.digests = blobs.map(\.digest)
            })
            let batch = options.batch
            let expectedBytes = options.batch * options.blobSize
            return {
                let summary = try await grpc.unary(
                    request: ClientRequest(message: request),
                    descriptor: CASMethod.BatchReadBlobs.descriptor,
                    serializer: PreSerializedSerializer(),
                    // BatchReadBlobsResponse.responses = 1; Response.status = 3.
                    deserializer: WireSummaryDeserializer(field: 1, statusField: 3),
                    options: .defaults
                ) { try $0.message }
                // Each entry also carries its digest and framing, so its payload exceeds the blob's size.
                guard summary.count == batch, summary.failures == 0, summary.payloadBytes >= expectedBytes else {
                    throw BenchmarkError("a batch read failed")
                }
            }
        case .byteStreamWrite:
            let blob = GeneratedBlob(size: Int64(options.blobSize))
            return {
                try await write(blob, serial: serial.next())
            }
        case .byteStreamRead:
            let blob = GeneratedBlob(size: Int64(options.blobSize))
            let seed = serial.next()
            let digest = blob.digest(seed)
            try await write(blob, serial: seed)
            let resource = (instance.isEmpty ? "" : "\(instance)/") + "blobs/\(digest.hash)/\(digest.sizeBytes)"
            let expected = digest.sizeBytes
            return {
                let received = try await grpc.serverStreaming(
                    request: ClientRequest(message: Google_Bytestream_ReadRequest.with { $0.resourceName = resource }),
                    descriptor: ByteStreamMethod.Read.descriptor,
                    serializer: ProtobufSerializer<Google_Bytestream_ReadRequest>(),
                    // ReadResponse.data = 10: its length is all a reader needs here.
                    deserializer: WireSummaryDeserializer(field: 10),
                    options: .defaults
                ) { response in
                    var total: Int64 = 0
                    for try await message in response.messages { total += Int64(message.payloadBytes) }
                    return total
                }
                guard received == expected else { throw BenchmarkError("read \(received) of \(expected) bytes") }
            }
        case .actionCache:
            let factory = BlobFactory(size: 64)
            return {
                let action = factory.make(serial.next()).digest
                // No outputs: servers that check completeness would otherwise need CAS blobs too.
                let result = Build_Bazel_Remote_Execution_V2_ActionResult.with {
                    $0.exitCode = 0
                    $0.stdoutRaw = Data("ok\n".utf8)
                }
                _ = try await actionCache.updateActionResult(.with {
                    $0.instanceName = instance
                    $0.actionDigest = action
                    $0.actionResult = result
                })
                _ = try await actionCache.getActionResult(.with {
                    $0.instanceName = instance
                    $0.actionDigest = action
                })
            }
        case .rpcFloor:
            let request = Build_Bazel_Remote_Execution_V2_GetCapabilitiesRequest.with { $0.instanceName = instance }
            return {
                _ = try await capabilities.getCapabilities(request)
            }
        case .bazelMix:
            let inputs = BlobFactory(size: 2048)
            let outputs = BlobFactory(size: 16 << 10)
            return {
                // Cold build step: look up the action, find which inputs are missing, upload them,
                // upload the outputs, store the result.
                // The action blob is an Action message: servers may parse it when its result is stored
                // (BuildGrid does, and refuses random bytes).
                let actionData = try Build_Bazel_Remote_Execution_V2_Action.with {
                    $0.salt = withUnsafeBytes(of: serial.next()) { Data($0) }
                }.serializedData()
                let action = (digest: ProtoDigest.with {
                    $0.hash = Digest.of(actionData).hash
                    $0.sizeBytes = Int64(actionData.count)
                }, data: actionData)
                let sources = (0..<8).map { _ in inputs.make(serial.next()) }
                let produced = (0..<3).map { _ in outputs.make(serial.next()) }
                do {
                    _ = try await actionCache.getActionResult(.with { $0.instanceName = instance; $0.actionDigest = action.digest })
                } catch let error as RPCError where error.code == .notFound {}
                let missing = try await cas.findMissingBlobs(.with {
                    $0.instanceName = instance
                    $0.blobDigests = ([action] + sources).map(\.digest)
                })
                let wanted = Set(missing.missingBlobDigests.map(\.hash))
                try await upload(([action] + sources).filter { wanted.contains($0.digest.hash) } + produced)
                _ = try await actionCache.updateActionResult(.with {
                    $0.instanceName = instance
                    $0.actionDigest = action.digest
                    $0.actionResult = .with { $0.outputFiles = produced.enumerated().map { index, blob in
                        .with { $0.path = "out/\(index)"; $0.digest = blob.digest }
                    } }
                })
                // Warm build step: hit, then fetch the outputs.
                let result = try await actionCache.getActionResult(.with { $0.instanceName = instance; $0.actionDigest = action.digest })
                let read = try await cas.batchReadBlobs(.with {
                    $0.instanceName = instance
                    $0.digests = result.outputFiles.map(\.digest)
                })
                guard read.responses.allSatisfy({ $0.status.code == 0 }) else { throw BenchmarkError("outputs missing") }
            }
        }
    }

    /// The number of digests the server reports missing.
    func findMissing(_ request: PreSerialized) async throws -> Int {
        try await grpc.unary(
            request: ClientRequest(message: request),
            descriptor: CASMethod.FindMissingBlobs.descriptor,
            serializer: PreSerializedSerializer(),
            // FindMissingBlobsResponse.missing_blob_digests = 2.
            deserializer: WireSummaryDeserializer(field: 2),
            options: .defaults
        ) { try $0.message.count }
    }

    func upload(_ blobs: [(digest: ProtoDigest, data: Data)]) async throws {
        let response = try await cas.batchUpdateBlobs(.with {
            $0.instanceName = options.instanceName
            $0.requests = blobs.map { blob in .with { $0.digest = blob.digest; $0.data = blob.data } }
        })
        if let failed = response.responses.first(where: { $0.status.code != 0 }) {
            throw BenchmarkError("BatchUpdateBlobs failed: \(failed.status.message)")
        }
    }

    func write(_ blob: GeneratedBlob, serial: UInt64) async throws {
        let digest = blob.digest(serial)
        let resource = (options.instanceName.isEmpty ? "" : "\(options.instanceName)/")
            + "uploads/\(UUID())/blobs/\(digest.hash)/\(digest.sizeBytes)"
        let committed = try await byteStream.write(requestProducer: { writer in
            var offset: Int64 = 0
            while offset < blob.size {
                let chunk = blob.chunk(at: offset, serial: serial)
                let last = offset + Int64(chunk.count) == blob.size
                let start = offset
                try await writer.write(.with {
                    $0.resourceName = start == 0 ? resource : ""
                    $0.writeOffset = start
                    $0.data = chunk
                    $0.finishWrite = last
                })
                offset += Int64(chunk.count)
            }
        }).committedSize
        guard committed == digest.sizeBytes else { throw BenchmarkError("Write committed \(committed) of \(digest.sizeBytes) bytes") }
    }
}

extension PreSerialized {
    init(_ message: some SwiftProtobuf.Message) throws {
        self.init(bytes: try message.serializedBytes())
    }
}

/// Bytes that make blobs unique: a per-process random seed and a serial, written at the end of a blob.
private let uniqueTailBytes = 16
private let runSeed = UInt64.random(in: 0...UInt64.max)

private func uniqueTail(_ serial: UInt64) -> [UInt8] {
    withUnsafeBytes(of: (runSeed, serial)) { Array($0) }
}

/// New blobs of one size that cost almost nothing to make and to hash.
///
/// Every blob is one random base whose last 16 bytes are replaced by a seed and a serial. The SHA-256
/// state after the whole 64-byte blocks before those bytes is computed once, so a new blob's digest
/// costs the hashing of its last block or two, not of the whole blob: a client hashing every 4 KiB
/// blob it sends spent a fifth of its time in SHA-256, taken from the server it measures. The server
/// still receives and verifies every byte.
struct BlobFactory: Sendable {
    let size: Int
    let base: [UInt8]
    /// Bytes hashed into `prefixHasher`: the whole blocks before the unique tail.
    let prefixLength: Int
    let prefixHasher: BlobHasher

    init(size: Int) {
        var generator = SystemRandomNumberGenerator()
        var words = [UInt64](repeating: 0, count: (size + 7) / 8)
        for index in words.indices { words[index] = generator.next() }
        base = words.withUnsafeBytes { Array($0.prefix(size)) }
        self.size = size
        prefixLength = max(0, size - uniqueTailBytes) / 64 * 64
        var hasher = BlobHasher()
        hasher.update(base[0..<prefixLength])
        prefixHasher = hasher
    }

    /// The blob's bytes from `prefixLength` to its end.
    private func suffix(_ serial: UInt64) -> [UInt8] {
        let tailStart = max(0, size - uniqueTailBytes)
        return Array(base[prefixLength..<tailStart]) + uniqueTail(serial).prefix(size - tailStart)
    }

    func hash(_ serial: UInt64) -> String {
        var hasher = prefixHasher
        hasher.update(suffix(serial))
        return hasher.finalizeHex()
    }

    func make(_ serial: UInt64) -> (digest: ProtoDigest, data: Data) {
        let hash = hash(serial)
        var data = Data(base[0..<prefixLength])
        data.append(contentsOf: suffix(serial))
        return (.with { $0.hash = hash; $0.sizeBytes = Int64(size) }, data)
    }

    /// The wire size of one BatchUpdateBlobsRequest.requests entry, with its tag.
    var updateEntrySize: Int {
        let digest = 2 + 64 + 1 + Wire.varintSize(UInt64(size))
        let body = 1 + Wire.varintSize(UInt64(digest)) + digest + 1 + Wire.varintSize(UInt64(size)) + size
        return 1 + Wire.varintSize(UInt64(body)) + body
    }

    /// Appends a BatchUpdateBlobsRequest.requests entry (field 2) holding a new blob.
    func appendUpdateEntry(_ serial: UInt64, to out: inout [UInt8]) {
        let hash = hash(serial)
        // Digest { hash = 1; size_bytes = 2 }
        let digestSize = 2 + hash.utf8.count + 1 + Wire.varintSize(UInt64(size))
        // Request { digest = 1; data = 2 }
        let body = 1 + Wire.varintSize(UInt64(digestSize)) + digestSize + 1 + Wire.varintSize(UInt64(size)) + size
        Wire.appendTag(2, .lengthDelimited, to: &out)
        Wire.appendVarint(UInt64(body), to: &out)
        Wire.appendTag(1, .lengthDelimited, to: &out)
        Wire.appendVarint(UInt64(digestSize), to: &out)
        Wire.appendTag(1, .lengthDelimited, to: &out)
        Wire.appendVarint(UInt64(hash.utf8.count), to: &out)
        out.append(contentsOf: hash.utf8)
        Wire.appendTag(2, .varint, to: &out)
        Wire.appendVarint(UInt64(size), to: &out)
        Wire.appendTag(2, .lengthDelimited, to: &out)
        Wire.appendVarint(UInt64(size), to: &out)
        out.append(contentsOf: base[0..<prefixLength])
        out.append(contentsOf: suffix(serial))
    }
}

/// A blob of any size made on the fly and never held whole: one random chunk repeated, with a seed and
/// serial in its last 16 bytes. As in `BlobFactory`, the hash state before those bytes is computed once
/// (at set-up, before the clock starts), and every chunk but the last is the shared random chunk itself,
/// so sending a blob copies nothing on the client's side before serialization.
struct GeneratedBlob: Sendable {
    let size: Int64
    /// The repeated chunk: `min(size, 1 MiB)` random bytes.
    let chunk: Data
    let prefixLength: Int64
    let prefixHasher: BlobHasher

    static let chunkSize = 1 << 20

    init(size: Int64) {
        self.size = size
        let chunkSize = Int(min(size, Int64(Self.chunkSize)))
        chunk = Data(BlobFactory(size: chunkSize).base)
        prefixLength = max(0, size - Int64(uniqueTailBytes)) / 64 * 64
        var hasher = BlobHasher()
        var offset: Int64 = 0
        while offset < prefixLength {
            let count = Int(min(Int64(chunkSize), prefixLength - offset))
            hasher.update(chunk.prefix(count))
            offset += Int64(count)
        }
        prefixHasher = hasher
    }

    private var tailStart: Int64 { max(0, size - Int64(uniqueTailBytes)) }

    /// The chunk of the blob that starts at `offset` (a multiple of the chunk size).
    func chunk(at offset: Int64, serial: UInt64) -> Data {
        let count = Int(min(Int64(chunk.count), size - offset))
        let end = offset + Int64(count)
        guard end > tailStart else { return chunk.prefix(count) }
        var data = Data(chunk.prefix(count))
        let tail = uniqueTail(serial)
        for position in max(offset, tailStart)..<end {
            data[data.startIndex + Int(position - offset)] = tail[Int(position - tailStart)]
        }
        return data
    }

    func digest(_ serial: UInt64) -> Digest {
        var hasher = prefixHasher
        var rest: [UInt8] = []
        let chunkSize = Int64(chunk.count)
        for position in prefixLength..<tailStart { rest.append(chunk[chunk.startIndex + Int(position % chunkSize)]) }
        rest += uniqueTail(serial).prefix(Int(size - tailStart))
        hasher.update(rest)
        return try! Digest(hash: hasher.finalizeHex(), sizeBytes: size)
    }
}

struct BenchmarkError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
