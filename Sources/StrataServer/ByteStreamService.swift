import Foundation
import GRPCCore
import StrataAPI
import StrataCore
import StrataProto
import StrataStorage

typealias ByteStream = Google_Bytestream_ByteStream

/// ByteStream Read, Write and QueryWriteStatus over an instance's storage, streaming in bounded chunks.
public struct ByteStreamService: ByteStream.ServiceProtocol {
    let registry: InstanceRegistry
    let uploads: UploadRegistry

    public init(registry: InstanceRegistry, uploads: UploadRegistry) {
        self.registry = registry
        self.uploads = uploads
    }

    static let readMessageBytes = 256 << 10

    public func read(
        request: ServerRequest<Google_Bytestream_ReadRequest>, context: ServerContext
    ) async throws -> StreamingServerResponse<Google_Bytestream_ReadResponse> {
        let message = request.message
        let name = try ResourceName.parseRead(message.resourceName)
        let storage = try registry.byteStream(name.instanceName)
        let compressor = try BlobCompressor(resourceSegment: name.compressor)
        guard message.readOffset >= 0 else {
            throw StrataError.outOfRange("read_offset \(message.readOffset) is negative")
        }
        guard message.readOffset <= name.digest.sizeBytes else {
            throw StrataError.outOfRange(
                "read_offset \(message.readOffset) is past the end of blob \(name.digest) (\(name.digest.sizeBytes) bytes)")
        }
        guard message.readLimit >= 0 else {
            throw StrataError.invalidArgument("read_limit \(message.readLimit) is negative")
        }
        // The spec: a compressed read's offset is in uncompressed bytes, and it has no limit.
        guard compressor == .identity || message.readLimit == 0 else {
            throw StrataError.invalidArgument(
                "read_limit \(message.readLimit) on a compressed-blobs read: compressed reads must use read_limit 0")
        }
        // Open before answering, so NOT_FOUND is the RPC's status rather than a broken stream.
        // A whole blob the storage holds compressed goes out as stored (verified on the way); the rest
        // is read and compressed here.
        let body: BlobBody
        if compressor == .zstd, message.readOffset == 0, let stored = try await storage.store.readZstd(name.digest) {
            body = stored
        } else {
            body = compressor.compressing(
                try await storage.store.read(
                    name.digest, offset: message.readOffset, limit: message.readLimit == 0 ? nil : message.readLimit),
                uncompressedSize: name.digest.sizeBytes - message.readOffset)
        }
        let requestContext = RequestContext.current
        return StreamingServerResponse { writer in
            for try await chunk in body {
                var start = chunk.startIndex
                while start < chunk.endIndex {
                    let end = min(start + Self.readMessageBytes, chunk.endIndex)
                    try await writer.write(.with { $0.data = chunk[start..<end] })
                    requestContext?.addSent(end - start)
                    start = end
                }
            }
            return [:]
        }
    }

    public func write(
        request: StreamingServerRequest<Google_Bytestream_WriteRequest>, context: ServerContext
    ) async throws -> ServerResponse<Google_Bytestream_WriteResponse> {
        var messages = request.messages.makeAsyncIterator()
        guard let first = try await messages.next() else {
            throw StrataError.invalidArgument("Write stream carried no request")
        }
        let name = try ResourceName.parseWrite(first.resourceName)
        let instance = try registry.instance(name.instanceName)
        let storage = try registry.service(Instance.ByteStream.self, in: instance)
        let compressor = try BlobCompressor(resourceSegment: name.compressor)
        guard !storage.readOnly else {
            throw StrataError(.permissionDenied, "the storage of instance \"\(StrataError.echo(name.instanceName))\" is read-only")
        }
        let digest = name.digest
        if let limit = instance.maximumBlobSize, digest.sizeBytes > limit {
            throw StrataError.invalidArgument("blob \(digest) is larger than max_cas_blob_size_bytes (\(limit))")
        }

        // Early completion: the blob is already stored, so the rest of the stream is not needed. The
        // committed_size of a compressed upload completed early is -1, as the spec says (the compressed
        // size of a stream not read to its end is unknown). Bazel's uploader accepts a compressed Write's
        // committed_size only as -1 or the compressed bytes it sent, which a finished Write answers.
        let completedEarly = compressor == .identity ? digest.sizeBytes : -1
        if uploads.committedSize(name) == nil, try await storage.store.findMissing([digest]).isEmpty {
            return ServerResponse(message: .with { $0.committedSize = completedEarly })
        }
        // Offsets and sizes of a compressed Write count compressed bytes.
        let maximumWireSize = compressor.maximumWireSize(ofUncompressed: digest.sizeBytes)

        let upload: UploadRegistry.Upload
        switch try uploads.claim(name, writeOffset: first.writeOffset, store: storage.store, compressor: compressor) {
        case .started(let started): upload = started
        case .resumed(let resumed): upload = resumed
        }

        var message = first
        do {
            while true {
                if !message.resourceName.isEmpty && message.resourceName != first.resourceName {
                    throw StrataError.invalidArgument(
                        "resource_name changed within one Write stream (\"\(StrataError.echo(message.resourceName))\" after \"\(StrataError.echo(first.resourceName))\")")
                }
                let committed = upload.committed
                guard message.writeOffset == committed else {
                    throw StrataError.invalidArgument(
                        "write_offset \(message.writeOffset) does not follow the \(committed) bytes received")
                }
                guard committed + Int64(message.data.count) <= maximumWireSize else {
                    throw StrataError.invalidArgument(compressor == .identity
                        ? "Write sent \(committed + Int64(message.data.count)) bytes or more for blob \(digest) of \(digest.sizeBytes) bytes"
                        : "Write sent \(committed + Int64(message.data.count)) compressed bytes or more for blob \(digest) of \(digest.sizeBytes) bytes, more than zstd can need (\(maximumWireSize))")
                }
                if !message.data.isEmpty {
                    if await upload.chunks.send(message.data) {
                        upload.withState { $0.committed += Int64(message.data.count) }
                        RequestContext.current?.addReceived(message.data.count)
                    } else if !upload.storeFinished {
                        // Not taken, and the store still reads: this stream was cancelled (or the upload
                        // abandoned). The chunk is not committed, so a resumed Write sends it again.
                        throw Task.isCancelled
                            ? StrataError(.cancelled, "the Write was cancelled before blob \(digest)'s chunk at offset \(committed) was stored")
                            : StrataError(.aborted, "the upload of blob \(digest) was abandoned")
                    }
                }
                if upload.storeFinished {
                    // The store ended the write early: it found the blob stored, or it failed.
                    uploads.remove(upload)
                    try await upload.storeWrite.value
                    return ServerResponse(message: .with { $0.committedSize = completedEarly })
                }
                if message.finishWrite {
                    // A compressed stream's end is checked by its decompression (and the store's hash).
                    guard compressor != .identity || upload.committed == digest.sizeBytes else {
                        throw StrataError.invalidArgument(
                            "finish_write after \(upload.committed) bytes, but blob \(digest) has \(digest.sizeBytes)")
                    }
                    upload.chunks.finish()
                    uploads.remove(upload)
                    try await upload.storeWrite.value
                    // Compressed: all the bytes this upload received, as its write offsets counted them.
                    let committedSize = upload.committed
                    return ServerResponse(message: .with { $0.committedSize = committedSize })
                }
                guard let next = try await messages.next() else {
                    // The client closed its side without finish_write: answer what is committed and keep
                    // the upload open for a Write that resumes it.
                    uploads.park(upload)
                    return ServerResponse(message: .with { $0.committedSize = upload.committed })
                }
                message = next
            }
        } catch let error as StrataError where error.code == .invalidArgument {
            // A malformed stream cannot be resumed meaningfully: drop the upload and what it wrote.
            uploads.remove(upload)
            upload.abandon(error.message)
            throw error
        } catch {
            if upload.storeFinished {
                uploads.remove(upload)
            } else {
                // The stream broke (cancelled, connection lost): keep the upload for a resumption.
                uploads.park(upload)
            }
            throw error
        }
    }

    public func queryWriteStatus(
        request: ServerRequest<Google_Bytestream_QueryWriteStatusRequest>, context: ServerContext
    ) async throws -> ServerResponse<Google_Bytestream_QueryWriteStatusResponse> {
        let name = try ResourceName.parseWrite(request.message.resourceName)
        let storage = try registry.byteStream(name.instanceName)
        let compressor = try BlobCompressor(resourceSegment: name.compressor)
        if let committed = uploads.committedSize(name) {
            return ServerResponse(message: .with {
                $0.committedSize = committed
                $0.complete = false
            })
        }
        if try await storage.store.findMissing([name.digest]).isEmpty {
            return ServerResponse(message: .with {
                // As a Write completed early: a compressed size is unknown for a blob stored uncompressed.
                $0.committedSize = compressor == .identity ? name.digest.sizeBytes : -1
                $0.complete = true
            })
        }
        throw StrataError.notFound("no upload of \(StrataError.echo(request.message.resourceName)) is in progress or complete")
    }
}
