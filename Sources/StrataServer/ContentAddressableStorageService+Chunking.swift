import Foundation
import GRPCCore
import StrataAPI
import StrataChunking
import StrataCore
import StrataProto
import StrataStorage

extension Instance {
    /// `enable-chunking: true` on the instance's `!cas`: the FastCDC 2020 chunker SplitBlob cuts with.
    /// An instance without it answers SplitBlob and SpliceBlob with UNIMPLEMENTED and advertises neither.
    public enum BlobChunking: InstanceServiceKey {
        public typealias Value = FastCDC2020
        public static let serviceName = "SplitBlob/SpliceBlob"
    }
}

// SplitBlob and SpliceBlob keep no chunk mappings: a split cuts the stored blob as it streams and
// stores each chunk as an ordinary blob; a splice streams the chunks' concatenation into the storage's
// verifying write, so the spliced blob is an ordinary blob too. Neither holds a whole blob in memory.
extension ContentAddressableStorageService {
    /// Bytes of chunks SplitBlob stores together (see `splitBlob`).
    static let splitStoreGroupBytes = 4 << 20

    public func splitBlob(
        request: Build_Bazel_Remote_Execution_V2_SplitBlobRequest, context: ServerContext
    ) async throws -> Build_Bazel_Remote_Execution_V2_SplitBlobResponse {
        let (cas, chunker) = try chunkingService(request.instanceName, call: "SplitBlob")
        let function = try DigestFunction.of(request: request.digestFunction, firstHash: request.blobDigest.hash)
        let blob = try Digest(request.blobDigest, function: function)
        // NOT_FOUND here, before any chunk is made, when the blob is absent. The split re-hashes the
        // blob as it reads it: a stored copy that does not match its digest ends the call with an
        // error instead of an answer whose chunks do not make up the blob.
        let body = try await cas.store.read(blob, offset: 0, limit: nil).verifying(blob)
        var chunks: [Digest] = []
        // The answer is bounded like every other message of this server (a batch): so is the list of
        // chunks held here, whatever the blob's size.
        var answerBytes = 0
        let answerLimit = Int(clamping: registry.maxBatchTotalSizeBytes)
        // Chunks are stored in groups of about `splitStoreGroupBytes`: one FindMissingBlobs and one batch
        // write per group rather than two round trips per chunk (remote and S3 storages), with at
        // most a group and a chunk held in memory.
        var pending: [(digest: Digest, data: Data)] = []
        var pendingBytes = 0
        func storePending() async throws {
            defer { pending.removeAll(keepingCapacity: true); pendingBytes = 0 }
            guard !pending.isEmpty else { return }
            // Chunks already stored are not written again.
            let missing = Set(try await cas.store.findMissing(pending.map(\.digest)))
            guard !missing.isEmpty else { return }
            if cas.readOnly, let first = pending.first(where: { missing.contains($0.digest) }) {
                throw StrataError.notFound(
                    "chunk \(first.digest) of blob \(blob) is not stored, and the CAS of instance \"\(StrataError.echo(request.instanceName))\" is read-only, so SplitBlob cannot store it")
            }
            // Once each: a blob of repeated content repeats its chunks.
            var toWrite = missing
            let results = await cas.store.writeBatch(pending.filter { toWrite.remove($0.digest) != nil })
            for case .failure(let error) in results { throw error }
        }
        try await chunker.split(body) { data in
            let chunk = Digest.of(data, function: function)
            answerBytes += ProtobufWire.lengthDelimitedSize(chunk.requestDigest.wireSize)
            guard answerBytes <= answerLimit else {
                throw StrataError.resourceExhausted(
                    "blob \(blob) makes more than \(chunks.count) chunks of about \(chunker.parameters.averageSize) bytes: SplitBlob's answer would be larger than max_batch_total_size_bytes (\(answerLimit)); a larger average-chunk-size makes fewer")
            }
            chunks.append(chunk)
            pending.append((chunk, data))
            pendingBytes += data.count
            if pendingBytes >= Self.splitStoreGroupBytes { try await storePending() }
        }
        try await storePending()
        return .with {
            $0.chunkDigests = chunks.map(\.proto)
            $0.chunkingFunction = .fastCdc2020
        }
    }

    public func spliceBlob(
        request: Build_Bazel_Remote_Execution_V2_SpliceBlobRequest, context: ServerContext
    ) async throws -> Build_Bazel_Remote_Execution_V2_SpliceBlobResponse {
        let instance = try registry.instance(request.instanceName)
        let (cas, _) = try chunkingService(instance, call: "SpliceBlob")
        guard !cas.readOnly else {
            throw StrataError(.permissionDenied, "the CAS of instance \"\(StrataError.echo(request.instanceName))\" is read-only: SpliceBlob stores a blob")
        }
        // The spec: one digest function for the blob and all its chunks.
        let function = try DigestFunction.of(request: request.digestFunction, firstHash: request.blobDigest.hash)
        let blob: Digest
        do {
            blob = try Digest(request.blobDigest, function: function)
        } catch {
            throw StrataError.invalidArgument("blob_digest: \(error.message)")
        }
        var chunks: [Digest] = []
        chunks.reserveCapacity(request.chunkDigests.count)
        var total: Int64 = 0
        for (index, proto) in request.chunkDigests.enumerated() {
            let chunk: Digest
            do {
                chunk = try Digest(proto, function: function)
            } catch {
                throw StrataError.invalidArgument("chunk_digests[\(index)]: \(error.message)")
            }
            // Saturating: sizes are the client's, and a sum past Int64.max must not trap the server.
            let (sum, overflow) = total.addingReportingOverflow(chunk.sizeBytes)
            total = overflow ? .max : sum
            chunks.append(chunk)
        }
        guard total == blob.sizeBytes else {
            throw StrataError.invalidArgument(
                "the \(chunks.count) chunks add up to \(total) bytes, but blob_digest \(blob) has \(blob.sizeBytes)")
        }
        if let limit = instance.maximumBlobSize, blob.sizeBytes > limit {
            throw StrataError.invalidArgument("blob \(blob) is larger than max_cas_blob_size_bytes (\(limit))")
        }
        let missing = try await cas.store.findMissing(chunks)
        guard missing.isEmpty else {
            let named = missing.prefix(10).map(\.description).joined(separator: ", ")
            throw StrataError.notFound(
                "\(missing.count) of the chunks \(missing.count == 1 ? "is" : "are") not in the CAS: \(named)\(missing.count > 10 ? ", …" : "")")
        }
        // Already stored: the spec lets the server accept the request as a no-op (the chunks' presence
        // was just checked, which also refreshes them in stores that track use).
        if try await cas.store.findMissing([blob]).isEmpty {
            return .with { $0.blobDigest = blob.proto }
        }
        do {
            // The storage's write verifies what it stores (every `BlobStore` does), so the concatenation
            // is hashed there, once; a mismatch stores nothing.
            try await cas.store.write(blob, body: Self.concatenation(of: chunks, from: cas.store, as: blob))
        } catch let error as StrataError where error.code == .invalidArgument {
            throw StrataError.invalidArgument(
                "the \(chunks.count) chunks do not make up blob_digest \(blob): \(error.message); nothing was stored")
        }
        return .with { $0.blobDigest = blob.proto }
    }

    /// The instance's CAS and chunker; UNIMPLEMENTED, saying so, when chunking is off for the instance.
    private func chunkingService(_ instanceName: String, call: String) throws -> (Instance.StorageService, FastCDC2020) {
        try chunkingService(try registry.instance(instanceName), call: call)
    }

    private func chunkingService(_ instance: Instance, call: String) throws -> (Instance.StorageService, FastCDC2020) {
        let cas = try registry.service(Instance.ContentAddressableStorage.self, in: instance)
        guard let chunker = instance[Instance.BlobChunking.self] else {
            throw StrataError.unimplemented(
                "\(call): chunking is off for instance \"\(StrataError.echo(instance.name))\" (enable-chunking: true on its !cas turns it on; Capabilities: split_blob_support and splice_blob_support false)")
        }
        return (cas, chunker)
    }

    /// The chunks' bytes one after the other, read as the storage's write pulls them (which verifies
    /// them as `blob`).
    static func concatenation(of chunks: [Digest], from store: any BlobStore, as blob: Digest) -> BlobBody {
        BlobBody {
            var next = 0
            var current: BlobBody.AsyncIterator?
            return BlobBody.AsyncIterator {
                while true {
                    if let data = try await current?.next() { return data }
                    guard next < chunks.count else { return nil }
                    let chunk = chunks[next]
                    next += 1
                    do {
                        current = try await store.read(chunk, offset: 0, limit: nil).makeAsyncIterator()
                    } catch let error as StrataError where error.code == .notFound {
                        throw StrataError.notFound("chunk \(chunk) went missing while splicing blob \(blob): \(error.message)")
                    }
                }
            }
        }
    }
}
