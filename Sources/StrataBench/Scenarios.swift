import Foundation
import GRPCCore
import StrataAPI
import StrataCore

/// The clients of one benchmark and the per-scenario set-up and operation.
struct Clients: Sendable {
    let cas: CASClient
    let byteStream: ByteStreamClient
    let actionCache: ActionCacheClient
    let options: BenchmarkOptions

    var itemsPerOperation: Int {
        switch options.scenario {
        case .findMissingPresent, .findMissingMissing, .batchUpdate, .batchRead: options.batch
        case .byteStreamWrite, .byteStreamRead, .actionCache, .bazelMix: 1
        }
    }

    var payloadBytesPerOperation: Int64 {
        switch options.scenario {
        case .batchUpdate, .batchRead: Int64(options.batch * options.blobSize)
        case .byteStreamWrite, .byteStreamRead: Int64(options.blobSize)
        case .findMissingPresent, .findMissingMissing, .actionCache, .bazelMix: 0
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
            let request = Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with {
                $0.instanceName = instance
                $0.blobDigests = blobs.map(\.digest)
            }
            return {
                let response = try await cas.findMissingBlobs(request)
                guard response.missingBlobDigests.isEmpty else { throw BenchmarkError("stored blobs reported missing") }
            }
        case .findMissingMissing:
            let factory = BlobFactory(size: 100)
            let request = Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest.with {
                $0.instanceName = instance
                $0.blobDigests = (0..<options.batch).map { _ in factory.make(serial.next()).digest }
            }
            return {
                let response = try await cas.findMissingBlobs(request)
                guard response.missingBlobDigests.count == request.blobDigests.count else {
                    throw BenchmarkError("absent blobs reported present")
                }
            }
        case .batchUpdate:
            let factory = BlobFactory(size: options.blobSize)
            let batch = options.batch
            return {
                try await upload((0..<batch).map { _ in factory.make(serial.next()) })
            }
        case .batchRead:
            let factory = BlobFactory(size: options.blobSize)
            let blobs = (0..<options.batch).map { _ in factory.make(serial.next()) }
            try await upload(blobs)
            let request = Build_Bazel_Remote_Execution_V2_BatchReadBlobsRequest.with {
                $0.instanceName = instance
                $0.digests = blobs.map(\.digest)
            }
            return {
                let response = try await cas.batchReadBlobs(request)
                guard response.responses.allSatisfy({ $0.status.code == 0 }) else { throw BenchmarkError("a batch read failed") }
            }
        case .byteStreamWrite:
            let size = options.blobSize
            let chunk = BlobFactory(size: min(size, 1 << 20))
            return {
                let stream = GeneratedBlob(size: size, seed: serial.next(), chunk: chunk.base)
                let digest = stream.digest()
                try await write(stream, digest: digest)
            }
        case .byteStreamRead:
            let stream = GeneratedBlob(size: options.blobSize, seed: serial.next(), chunk: BlobFactory(size: min(options.blobSize, 1 << 20)).base)
            let digest = stream.digest()
            try await write(stream, digest: digest)
            let resource = (instance.isEmpty ? "" : "\(instance)/") + "blobs/\(digest.hash)/\(digest.sizeBytes)"
            let expected = digest.sizeBytes
            return {
                let received = try await byteStream.read(.with { $0.resourceName = resource }) { response in
                    var total: Int64 = 0
                    for try await message in response.messages { total += Int64(message.data.count) }
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
        case .bazelMix:
            let inputs = BlobFactory(size: 2048)
            let outputs = BlobFactory(size: 16 << 10)
            return {
                // Cold build step: look up the action, find which inputs are missing, upload them,
                // upload the outputs, store the result.
                let action = inputs.make(serial.next())
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

    func upload(_ blobs: [(digest: ProtoDigest, data: Data)]) async throws {
        let response = try await cas.batchUpdateBlobs(.with {
            $0.instanceName = options.instanceName
            $0.requests = blobs.map { blob in .with { $0.digest = blob.digest; $0.data = blob.data } }
        })
        if let failed = response.responses.first(where: { $0.status.code != 0 }) {
            throw BenchmarkError("BatchUpdateBlobs failed: \(failed.status.message)")
        }
    }

    func write(_ blob: GeneratedBlob, digest: Digest) async throws {
        let resource = (options.instanceName.isEmpty ? "" : "\(options.instanceName)/")
            + "uploads/\(UUID())/blobs/\(digest.hash)/\(digest.sizeBytes)"
        let committed = try await byteStream.write(requestProducer: { writer in
            var offset: Int64 = 0
            for chunk in blob.chunks(size: 1 << 20) {
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

/// A blob of any size made on the fly (never held whole in memory): one random chunk repeated, with the
/// seed and chunk number written into each chunk so the blob is unique.
struct GeneratedBlob: Sendable {
    let size: Int64
    let seed: UInt64
    let chunk: Data

    init(size: Int, seed: UInt64, chunk: Data) {
        self.size = Int64(size)
        self.seed = seed
        self.chunk = chunk
    }

    func chunks(size chunkSize: Int) -> some Sequence<Data> {
        let total = size
        let base = chunk
        let seed = seed
        return sequence(state: Int64(0)) { (offset: inout Int64) -> Data? in
            guard offset < total else { return nil }
            let count = Int(min(Int64(min(chunkSize, base.count)), total - offset))
            var data = base.prefix(count)
            if count >= 16 {
                withUnsafeBytes(of: (seed, UInt64(offset))) { data.replaceSubrange(data.startIndex..<(data.startIndex + 16), with: $0) }
            }
            offset += Int64(count)
            return Data(data)
        }
    }

    func digest() -> Digest {
        var hasher = BlobHasher()
        for chunk in chunks(size: 1 << 20) { hasher.update(chunk) }
        return try! Digest(hash: hasher.finalizeHex(), sizeBytes: size)
    }
}

struct BenchmarkError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
