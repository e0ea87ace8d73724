import Foundation
import GRPCCore
import StrataAPI
import StrataActionCache
import StrataCore
import StrataProto
import StrataStorage
import SwiftProtobuf

typealias CAS = Build_Bazel_Remote_Execution_V2_ContentAddressableStorage
typealias Directory = Build_Bazel_Remote_Execution_V2_Directory

public struct ContentAddressableStorageService: CAS.SimpleServiceProtocol {
    let registry: InstanceRegistry

    public init(registry: InstanceRegistry) { self.registry = registry }

    public func findMissingBlobs(
        request: Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest, context: ServerContext
    ) async throws -> Build_Bazel_Remote_Execution_V2_FindMissingBlobsResponse {
        let missing = try await findMissing(DigestsRequest(
            instanceName: request.instanceName, digestFunction: request.digestFunction.rawValue,
            entries: request.blobDigests.map { RequestDigest(hash: $0.hash, sizeBytes: $0.sizeBytes) }))
        return .with { $0.missingBlobDigests = missing.map(\.proto) }
    }

    func findMissing(_ request: DigestsRequest) async throws -> [Digest] {
        let cas = try registry.cas(request.instanceName)
        let function = try request.function()
        var digests: [Digest] = []
        digests.reserveCapacity(request.entries.count)
        for digest in request.entries { digests.append(try digest.validated(for: function)) }
        return try await cas.store.findMissing(digests)
    }

    public func batchUpdateBlobs(
        request: Build_Bazel_Remote_Execution_V2_BatchUpdateBlobsRequest, context: ServerContext
    ) async throws -> Build_Bazel_Remote_Execution_V2_BatchUpdateBlobsResponse {
        try await update(BlobsUploadRequest(
            instanceName: request.instanceName, digestFunction: request.digestFunction.rawValue,
            entries: request.requests.map {
                .init(digest: RequestDigest(hash: $0.digest.hash, sizeBytes: $0.digest.sizeBytes), data: $0.data,
                      compressor: $0.compressor.rawValue)
            })).proto
    }

    func update(_ request: BlobsUploadRequest) async throws -> BlobsUploadStatuses {
        let instance = try registry.instance(request.instanceName)
        let cas = try registry.service(Instance.ContentAddressableStorage.self, in: instance)
        guard !cas.readOnly else {
            throw StrataError(.permissionDenied, "the CAS of instance \"\(StrataError.echo(request.instanceName))\" is read-only")
        }
        let total = request.entries.reduce(Int64(0)) { $0 + Int64($1.data.count) }
        RequestContext.current?.addReceived(Int(total))
        guard total <= registry.maxBatchTotalSizeBytes else {
            throw StrataError.invalidArgument(
                "BatchUpdateBlobs carries \(total) bytes, more than max_batch_total_size_bytes (\(registry.maxBatchTotalSizeBytes)); upload large blobs with ByteStream")
        }
        // Compressed blobs count at their digests' sizes, the most they may decompress to (saturating:
        // the sizes are the client's): what the server holds in memory stays within the limit.
        let decompressed = request.entries.reduce(Int64(0)) { total, blob in
            let size = blob.compressor == BlobCompressor.identity.rawValue ? Int64(blob.data.count) : max(0, blob.digest.sizeBytes)
            let (sum, overflow) = total.addingReportingOverflow(size)
            return overflow ? .max : sum
        }
        guard decompressed <= registry.maxBatchTotalSizeBytes else {
            throw StrataError.invalidArgument(
                "BatchUpdateBlobs's blobs are \(decompressed) bytes uncompressed, more than max_batch_total_size_bytes (\(registry.maxBatchTotalSizeBytes)); upload large blobs with ByteStream")
        }
        let function = try request.function()

        // Looked up once: it asks each of the instance's storage services (a dynamic cast apiece).
        let maximumBlobSize = instance.maximumBlobSize

        // Validate each blob on its own: one bad blob gets its own status, the rest are stored.
        var errors = [StrataError?](repeating: nil, count: request.entries.count)
        var accepted: [(index: Int, digest: Digest, data: Data)] = []
        for (index, blob) in request.entries.enumerated() {
            do throws(StrataError) {
                let digest = try blob.digest.validated(for: function)
                let compressor: BlobCompressor
                do throws(StrataError) {
                    compressor = try BlobCompressor(protoValue: blob.compressor)
                } catch {
                    throw .invalidArgument("blob \(digest): \(error.message)")
                }
                if let limit = maximumBlobSize, digest.sizeBytes > limit {
                    throw .invalidArgument("blob \(digest) is larger than max_cas_blob_size_bytes (\(limit))")
                }
                // Decompressed to exactly the digest's size or refused (the store verifies the hash).
                let data = try compressor.decompress(blob.data, for: digest)
                guard Int64(data.count) == digest.sizeBytes else {
                    throw .invalidArgument("blob \(digest): \(data.count) bytes of data for a digest of size \(digest.sizeBytes)")
                }
                accepted.append((index, digest, data))
            } catch {
                errors[index] = error
            }
        }
        let blobs = accepted.map { (digest: $0.digest, data: $0.data) }
        let bytes = blobs.reduce(0) { $0 + $1.data.count }
        let results: [Result<Void, StrataError>]
        if BatchVerification.parts(forBytes: bytes, blobs: blobs.count) > 1 {
            // A large batch is stored from Swift's pool, where `verifyBatch` hashes it on every core: the
            // connection's thread, which otherwise did all of it, goes back to receiving the client's
            // next requests. Measured with tools/one-connection-cores (docs/performance.md).
            results = await withTaskExecutorPreference(globalConcurrentExecutor) { await cas.store.writeBatch(blobs) }
        } else {
            results = await cas.store.writeBatch(blobs)
        }
        for (blob, result) in zip(accepted, results) {
            if case .failure(let error) = result { errors[blob.index] = error }
        }
        return BlobsUploadStatuses(entries: zip(request.entries, errors).map { ($0.digest, $1) })
    }

    public func batchReadBlobs(
        request: Build_Bazel_Remote_Execution_V2_BatchReadBlobsRequest, context: ServerContext
    ) async throws -> Build_Bazel_Remote_Execution_V2_BatchReadBlobsResponse {
        try await read(DigestsRequest(
            instanceName: request.instanceName, digestFunction: request.digestFunction.rawValue,
            entries: request.digests.map { RequestDigest(hash: $0.hash, sizeBytes: $0.sizeBytes) },
            acceptableCompressors: request.acceptableCompressors.reduce(0) { $0 | ($1.rawValue < 64 ? 1 << UInt64($1.rawValue) : 0) })).proto
    }

    func read(_ request: DigestsRequest) async throws -> ReadBlobs {
        let cas = try registry.cas(request.instanceName)
        let function = try request.function()
        // Saturating: sizes are the client's, and two near Int64.max must not trap the server.
        let total = request.entries.reduce(Int64(0)) { total, digest in
            let (sum, overflow) = total.addingReportingOverflow(max(0, digest.sizeBytes))
            return overflow ? .max : sum
        }
        guard total <= registry.maxBatchTotalSizeBytes else {
            throw StrataError.invalidArgument(
                "BatchReadBlobs asks for \(total) bytes, more than max_batch_total_size_bytes (\(registry.maxBatchTotalSizeBytes)); read large blobs with ByteStream")
        }
        var results = [Result<Data, StrataError>](repeating: .success(Data()), count: request.entries.count)
        var valid: [(index: Int, digest: Digest)] = []
        for (index, digest) in request.entries.enumerated() {
            do throws(StrataError) {
                valid.append((index, try digest.validated(for: function)))
            } catch {
                results[index] = .failure(error)
            }
        }
        // zstd when the client accepts it: every blob read, so the response has one compressor.
        let compressor: BlobCompressor = request.accepts(.zstd) ? .zstd : .identity
        let read = await cas.store.readBatch(valid.map(\.digest))
        for (blob, result) in zip(valid, read) {
            results[blob.index] = result.flatMap { data in Result { () throws(StrataError) in try compressor.compress(data) } }
        }
        RequestContext.current?.addSent(results.reduce(0) { $0 + ((try? $1.get())?.count ?? 0) })
        return ReadBlobs(entries: zip(request.entries, results).map { ($0, $1) }, compressor: compressor)
    }

    public func getTree(
        request: Build_Bazel_Remote_Execution_V2_GetTreeRequest,
        response: RPCWriter<Build_Bazel_Remote_Execution_V2_GetTreeResponse>,
        context: ServerContext
    ) async throws {
        let cas = try registry.cas(request.instanceName)
        let function = try DigestFunction.of(request: request.digestFunction, firstHash: request.rootDigest.hash)
        let root = try Digest(request.rootDigest, function: function)
        guard request.pageSize >= 0 else { throw StrataError.invalidArgument("page_size \(request.pageSize) is negative") }
        let start = try TreePageToken.decode(request.pageToken)
        let walker = DirectoryWalker(
            store: cas.store, function: function, children: .skipMissing, maxBatchBytes: registry.maxBatchTotalSizeBytes)
        let pageSize = request.pageSize > 0 ? Int(request.pageSize) : Self.defaultTreePageSize
        var page: [Directory] = []
        var pageBytes = 0
        var position = 0
        do {
            try await walker.walk(roots: [root]) { entries in
                for entry in entries {
                    defer { position += 1 }
                    guard position >= start else { continue }
                    // Keep each message well under gRPC's 4 MiB default limit whatever page_size asks for.
                    if !page.isEmpty && (page.count >= pageSize || pageBytes + entry.sizeBytes > Self.maxTreeResponseBytes) {
                        let next = TreePageToken.encode(position)
                        let directories = page
                        try await response.write(.with {
                            $0.directories = directories
                            $0.nextPageToken = next
                        })
                        page.removeAll(keepingCapacity: true)
                        pageBytes = 0
                    }
                    page.append(entry.directory)
                    pageBytes += entry.sizeBytes
                }
            }
        } catch let defect as DirectoryWalker.Defect {
            switch defect {
            case .missing(let digest) where digest == root:
                throw StrataError.notFound("root directory \(root) is not in the CAS")
            default:
                throw StrataError.invalidArgument(defect.description)
            }
        }
        if start > 0 && start >= position {
            throw StrataError.invalidArgument("page_token points past the end of the tree")
        }
        let last = page
        if !last.isEmpty { try await response.write(.with { $0.directories = last }) }
    }

    static let defaultTreePageSize = 1000
    static let maxTreeResponseBytes = 2 << 20
}

/// The page token of GetTree: the position of the next directory in the walk's order, which is the
/// same for every walk of an unchanged tree.
enum TreePageToken {
    static func encode(_ position: Int) -> String {
        Data("strata-tree-v1:\(position)".utf8).base64EncodedString()
    }

    static func decode(_ token: String) throws(StrataError) -> Int {
        if token.isEmpty { return 0 }
        guard let data = Data(base64Encoded: token), let text = String(data: data, encoding: .utf8),
              text.hasPrefix("strata-tree-v1:"), let position = Int(text.dropFirst("strata-tree-v1:".count)),
              position >= 0
        else {
            throw .invalidArgument("page_token \"\(StrataError.echo(token))\" was not issued by this server")
        }
        return position
    }
}
