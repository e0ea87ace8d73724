import Foundation
import GRPCCore
import StrataAPI
import StrataCore
import StrataProto

// FindMissingBlobs, BatchUpdateBlobs and BatchReadBlobs are most of a build's CAS traffic. Their
// requests are decoded straight off the wire and their answers written straight onto it: through
// generated messages, a FindMissingBlobs of 1000 digests allocated 1000 Strings of hex only to validate
// and drop them, and every answer was built as messages before being encoded. The field numbers are
// remote_execution.proto's; `CASWireTests` checks both directions against swift-protobuf.

/// A digest as a request carried it, before the request's digest function is known (that field may
/// come after the digests): 64 lower-case hex characters decoded into a key, or anything else kept as
/// sent, to be validated, and echoed in per-blob answers, exactly as the client wrote it.
struct RequestDigest: Sendable {
    /// The decoded hash when `text` is nil (`.sha256` when decoded from a request); the size either way.
    let key: DigestKey
    /// The hash as sent, when it is not 64 lower-case hex characters.
    let text: String?

    var sizeBytes: Int64 { key.sizeBytes }

    fileprivate init(key: DigestKey, text: String?) {
        self.key = key
        self.text = text
    }

    init(hash: String, sizeBytes: Int64) {
        if let digest = try? Digest(hash: hash, sizeBytes: sizeBytes, function: .sha256) {
            key = digest.key
            text = nil
        } else {
            key = DigestKey(w0: 0, w1: 0, w2: 0, w3: 0, sizeBytes: sizeBytes, function: .sha256)
            text = hash
        }
    }

    /// Decodes a `Digest` message from `bytes[range]`.
    init(wire bytes: UnsafeRawBufferPointer, in range: Range<Int>) throws {
        try self.init(wire: bytes, in: CollectionOfOne(range))
    }

    /// Decodes a `Digest` message sent in several parts (a singular message field repeated), which
    /// protobuf merges: each field's last value wins.
    init(wire bytes: UnsafeRawBufferPointer, in ranges: some Sequence<Range<Int>>) throws {
        var hash: Range<Int> = 0..<0
        var size: Int64 = 0
        for range in ranges {
            try ProtobufWire.forEachField(bytes, in: range) { field in
                switch (field.number, field.type) {
                case (1, .lengthDelimited): hash = field.payload
                case (2, .varint): size = Int64(bitPattern: field.varint)
                default: break // unknown, or a known number with another wire type: skipped as protobuf does
                }
            }
        }
        let hex = UnsafeRawBufferPointer(rebasing: bytes[hash])
        if hex.count == DigestFunction.sha256.hexLength,
           let digest = try? Digest(hex: hex, sizeBytes: size, function: .sha256) {
            key = digest.key
            text = nil
        } else {
            guard let string = String(validating: hex, as: UTF8.self) else {
                throw ProtobufWire.MalformedMessage("a Digest's hash (not UTF-8)")
            }
            key = DigestKey(w0: 0, w1: 0, w2: 0, w3: 0, sizeBytes: size, function: .sha256)
            text = string
        }
    }

    var hashLength: Int { text?.utf8.count ?? key.hexCount }

    /// The digest for the request's function; INVALID_ARGUMENT says what is wrong with it.
    func validated(for function: DigestFunction) throws(StrataError) -> Digest {
        if text == nil && function.hexLength == DigestKey.hexCapacity && sizeBytes >= 0 {
            // 64 hex digits already decoded: the same words under the request's function (BLAKE3).
            return Digest(key: DigestKey(w0: key.w0, w1: key.w1, w2: key.w2, w3: key.w3, sizeBytes: sizeBytes, function: function))
        }
        do {
            return try Digest(hash: text ?? key.hex, sizeBytes: sizeBytes, function: function)
        } catch where hashLength != function.hexLength {
            // A hash of another length may be an unsupported function's (MD5's): say which.
            do throws(StrataError) {
                _ = try DigestFunction.resolve(protoValue: 0, hashLength: hashLength)
            } catch let reason {
                throw .invalidArgument("\(error.message) (\(reason.message))")
            }
            throw error
        }
    }

    var proto: ProtoDigest {
        .with {
            $0.hash = text ?? key.hex
            $0.sizeBytes = sizeBytes
        }
    }

    /// Bytes of this digest as a `Digest` message (without its own tag and length).
    var wireSize: Int {
        ProtobufWire.lengthDelimitedSize(hashLength) + ProtobufWire.varintFieldSize(UInt64(bitPattern: sizeBytes))
    }

    func write(field: Int, to writer: inout ProtobufWire.Writer) {
        writer.lengthDelimited(field, length: wireSize)
        if var text {
            text.withUTF8 { writer.bytes(1, UnsafeRawBufferPointer($0)) }
        } else {
            writer.lengthDelimited(1, length: key.hexCount)
            key.writeHex(into: writer.reserve(key.hexCount))
        }
        writer.varintField(2, UInt64(bitPattern: sizeBytes))
    }
}

extension Digest {
    /// This digest as an answer writes it: the key's hex, or the whole hash when the key holds only
    /// part of it.
    var requestDigest: RequestDigest {
        RequestDigest(key: key, text: key.hexCount == function.hexLength ? nil : hash)
    }
}

/// A message decoded from its wire bytes without generated code.
protocol WireDecodable: Sendable {
    init(wire bytes: UnsafeRawBufferPointer) throws
}

/// A message written onto the wire without generated code.
protocol WireEncodable: Sendable {
    var wireSize: Int { get }
    func write(to writer: inout ProtobufWire.Writer)
}

struct WireDeserializer<Message: WireDecodable>: MessageDeserializer {
    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> Message {
        do {
            return try serializedMessageBytes.withUnsafeBytes { try Message(wire: $0) }
        } catch {
            throw RPCError(code: .invalidArgument, message: "can't decode the request: \(error)")
        }
    }
}

struct WireSerializer<Message: WireEncodable>: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: Message) throws -> Bytes {
        let size = message.wireSize
        var bytes = Bytes(repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { buffer in
            var writer = ProtobufWire.Writer(buffer)
            message.write(to: &writer)
            precondition(writer.position == size, "a wire message's size was miscounted")
        }
        return bytes
    }
}

/// One entry of a batch request, which names a digest.
protocol BatchEntry: Sendable {
    var requestDigest: RequestDigest { get }
}

extension RequestDigest: BatchEntry {
    var requestDigest: RequestDigest { self }
}

/// One blob of a BatchUpdateBlobsRequest: digest 1, data 2, compressor 3.
struct UploadedBlob: BatchEntry {
    var digest: RequestDigest
    var data: Data
    var compressor: Int

    var requestDigest: RequestDigest { digest }

    init(digest: RequestDigest, data: Data, compressor: Int) {
        self.digest = digest
        self.data = data
        self.compressor = compressor
    }

    init(wire bytes: UnsafeRawBufferPointer, in range: Range<Int>) throws {
        var digest: [Range<Int>] = []
        var data: Range<Int> = range.lowerBound..<range.lowerBound
        var compressor = 0
        try ProtobufWire.forEachField(bytes, in: range) { field in
            switch (field.number, field.type) {
            case (1, .lengthDelimited): digest.append(field.payload)
            case (2, .lengthDelimited): data = field.payload
            case (3, .varint): compressor = Int(Int32(truncatingIfNeeded: field.varint))
            default: break
            }
        }
        self.init(
            digest: try RequestDigest(wire: bytes, in: digest), data: Data(UnsafeRawBufferPointer(rebasing: bytes[data])),
            compressor: compressor)
    }
}

/// What the three batch requests share: instance_name (1), a repeated entry (2), and the digest
/// function, whose field number varies (3 in FindMissingBlobs, 4 in BatchReadBlobs, 5 in
/// BatchUpdateBlobs); and BatchReadBlobs' acceptable_compressors (3).
struct BatchRequest<Entry: BatchEntry>: Sendable {
    var instanceName: String
    var digestFunction: Int
    var entries: [Entry]
    /// acceptable_compressors as a set of `Compressor.Value`s (bit n: value n; values past 63 are
    /// ones no server knows, dropped).
    var acceptableCompressors: UInt64 = 0

    init(instanceName: String, digestFunction: Int, entries: [Entry], acceptableCompressors: UInt64 = 0) {
        self.instanceName = instanceName
        self.digestFunction = digestFunction
        self.entries = entries
        self.acceptableCompressors = acceptableCompressors
    }

    init(
        wire bytes: UnsafeRawBufferPointer, digestFunctionField: Int, compressorsField: Int? = nil,
        entry: (UnsafeRawBufferPointer, Range<Int>) throws -> Entry
    ) throws {
        var instanceName = ""
        var digestFunction = 0
        var entries: [Entry] = []
        var compressors: UInt64 = 0
        func accept(_ value: UInt64) {
            if value < 64 { compressors |= 1 << value }
        }
        try ProtobufWire.forEachField(bytes, in: 0..<bytes.count) { field in
            switch (field.number, field.type) {
            case (1, .lengthDelimited): instanceName = try wireString(bytes, field.payload, "instance_name")
            case (2, .lengthDelimited): entries.append(try entry(bytes, field.payload))
            case (digestFunctionField, .varint): digestFunction = Int(Int32(truncatingIfNeeded: field.varint))
            // A repeated enum comes packed (one length-delimited run of varints) or one value per field.
            case (compressorsField, .varint): accept(field.varint)
            case (compressorsField, .lengthDelimited):
                var position = field.payload.lowerBound
                while position < field.payload.upperBound {
                    accept(try ProtobufWire.readVarint(bytes, at: &position, end: field.payload.upperBound))
                }
            default: break
            }
        }
        self.init(instanceName: instanceName, digestFunction: digestFunction, entries: entries, acceptableCompressors: compressors)
    }

    func accepts(_ compressor: BlobCompressor) -> Bool {
        compressor == .identity || acceptableCompressors & (1 << UInt64(compressor.rawValue)) != 0
    }

    /// The request's digest function. When `digest_function` is unset it is inferred from the length
    /// of the first hash that names a supported function: a malformed digest is its own entry's
    /// problem (INVALID_ARGUMENT in that entry's status, or the request's for FindMissingBlobs when
    /// it is validated), never a reason to refuse the others. With no such hash, SHA-256, the default.
    func function() throws(StrataError) -> DigestFunction {
        guard digestFunction == 0 else { return try DigestFunction.resolve(protoValue: digestFunction, hashLength: nil) }
        for entry in entries {
            if let function = try? DigestFunction.resolve(protoValue: 0, hashLength: entry.requestDigest.hashLength) {
                return function
            }
        }
        return .sha256
    }
}

typealias DigestsRequest = BatchRequest<RequestDigest>
typealias BlobsUploadRequest = BatchRequest<UploadedBlob>

struct FindMissingBlobsWireRequest: WireDecodable {
    var request: DigestsRequest
    init(wire bytes: UnsafeRawBufferPointer) throws {
        request = try DigestsRequest(wire: bytes, digestFunctionField: 3, entry: RequestDigest.init(wire:in:))
    }
}

struct BatchReadBlobsWireRequest: WireDecodable {
    var request: DigestsRequest
    init(wire bytes: UnsafeRawBufferPointer) throws {
        request = try DigestsRequest(
            wire: bytes, digestFunctionField: 4, compressorsField: 3, entry: RequestDigest.init(wire:in:))
    }
}

struct BatchUpdateBlobsWireRequest: WireDecodable {
    var request: BlobsUploadRequest
    init(wire bytes: UnsafeRawBufferPointer) throws {
        request = try BlobsUploadRequest(wire: bytes, digestFunctionField: 5, entry: UploadedBlob.init(wire:in:))
    }
}

private func wireString(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ name: String) throws -> String {
    guard let string = String(validating: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self) else {
        throw ProtobufWire.MalformedMessage("\(name) (not UTF-8)")
    }
    return string
}

/// FindMissingBlobsResponse: missing_blob_digests 2.
struct MissingDigests: WireEncodable {
    var digests: [Digest]

    var wireSize: Int { digests.reduce(0) { $0 + ProtobufWire.lengthDelimitedSize($1.requestDigest.wireSize) } }

    func write(to writer: inout ProtobufWire.Writer) {
        for digest in digests { digest.requestDigest.write(field: 2, to: &writer) }
    }
}

/// A google.rpc.Status (code 1, message 2) of one blob: nil for OK.
private func statusSize(_ error: StrataError?) -> Int {
    guard let error else { return 0 }
    return ProtobufWire.varintFieldSize(UInt64(error.code.rawValue))
        + (error.message.isEmpty ? 0 : ProtobufWire.lengthDelimitedSize(error.message.utf8.count))
}

private func writeStatus(_ error: StrataError?, field: Int, to writer: inout ProtobufWire.Writer) {
    // Written even when OK (empty), as a message whose status field is set.
    writer.lengthDelimited(field, length: statusSize(error))
    guard let error else { return }
    writer.varintField(1, UInt64(error.code.rawValue))
    guard !error.message.isEmpty else { return }
    var message = error.message
    message.withUTF8 { writer.bytes(2, UnsafeRawBufferPointer($0)) }
}

/// BatchUpdateBlobsResponse: responses 1 (digest 1, status 2).
struct BlobsUploadStatuses: WireEncodable {
    var entries: [(digest: RequestDigest, error: StrataError?)]

    private static func entrySize(_ entry: (digest: RequestDigest, error: StrataError?)) -> Int {
        ProtobufWire.lengthDelimitedSize(entry.digest.wireSize) + ProtobufWire.lengthDelimitedSize(statusSize(entry.error))
    }

    var wireSize: Int { entries.reduce(0) { $0 + ProtobufWire.lengthDelimitedSize(Self.entrySize($1)) } }

    func write(to writer: inout ProtobufWire.Writer) {
        for entry in entries {
            writer.lengthDelimited(1, length: Self.entrySize(entry))
            entry.digest.write(field: 1, to: &writer)
            writeStatus(entry.error, field: 2, to: &writer)
        }
    }

    var proto: Build_Bazel_Remote_Execution_V2_BatchUpdateBlobsResponse {
        .with {
            $0.responses = entries.map { entry in
                .with {
                    $0.digest = entry.digest.proto
                    $0.status = entry.error?.rpcStatus ?? .ok
                }
            }
        }
    }
}

/// BatchReadBlobsResponse: responses 1 (digest 1, data 2, status 3, compressor 4, written for the
/// blobs read when it is not identity).
struct ReadBlobs: WireEncodable {
    var entries: [(digest: RequestDigest, result: Result<Data, StrataError>)]
    /// How the data of every blob read is compressed.
    var compressor: BlobCompressor = .identity

    private var compressorFieldSize: Int {
        compressor == .identity ? 0 : ProtobufWire.varintFieldSize(UInt64(compressor.rawValue))
    }

    private func entrySize(_ entry: (digest: RequestDigest, result: Result<Data, StrataError>)) -> Int {
        var size = ProtobufWire.lengthDelimitedSize(entry.digest.wireSize)
        switch entry.result {
        case .success(let data):
            if !data.isEmpty { size += ProtobufWire.lengthDelimitedSize(data.count) }
            size += ProtobufWire.lengthDelimitedSize(0) + compressorFieldSize
        case .failure(let error):
            size += ProtobufWire.lengthDelimitedSize(statusSize(error))
        }
        return size
    }

    var wireSize: Int { entries.reduce(0) { $0 + ProtobufWire.lengthDelimitedSize(entrySize($1)) } }

    func write(to writer: inout ProtobufWire.Writer) {
        for entry in entries {
            writer.lengthDelimited(1, length: entrySize(entry))
            entry.digest.write(field: 1, to: &writer)
            switch entry.result {
            case .success(let data):
                if !data.isEmpty { data.withUnsafeBytes { writer.bytes(2, $0) } }
                writeStatus(nil, field: 3, to: &writer)
                if compressor != .identity { writer.varintField(4, UInt64(compressor.rawValue)) }
            case .failure(let error):
                writeStatus(error, field: 3, to: &writer)
            }
        }
    }

    var proto: Build_Bazel_Remote_Execution_V2_BatchReadBlobsResponse {
        .with {
            $0.responses = entries.map { entry in
                .with {
                    $0.digest = entry.digest.proto
                    switch entry.result {
                    case .success(let data):
                        $0.data = data
                        $0.status = .ok
                        $0.compressor = compressor.proto
                    case .failure(let error):
                        $0.status = error.rpcStatus
                    }
                }
            }
        }
    }
}

/// The CAS service with the wire codecs above in place of generated ones for its three hot calls.
struct ContentAddressableStorageWireService: RegistrableRPCService {
    let service: ContentAddressableStorageService

    /// Replaces the generated handler of a unary method with one that uses the wire codecs.
    private static func register<Transport: ServerTransport, Request: WireDecodable, Response: WireEncodable>(
        _ method: MethodDescriptor, on router: inout RPCRouter<Transport>,
        _ handle: @escaping @Sendable (Request) async throws -> Response
    ) {
        router.registerHandler(
            forMethod: method, deserializer: WireDeserializer<Request>(), serializer: WireSerializer<Response>()
        ) { request, _ in
            let request = try await ServerRequest(stream: request)
            return StreamingServerResponse(single: ServerResponse(message: try await handle(request.message)))
        }
    }

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        service.registerMethods(with: &router)
        let service = self.service
        Self.register(CAS.Method.FindMissingBlobs.descriptor, on: &router) { (call: FindMissingBlobsWireRequest) in
            MissingDigests(digests: try await service.findMissing(call.request))
        }
        Self.register(CAS.Method.BatchUpdateBlobs.descriptor, on: &router) { (call: BatchUpdateBlobsWireRequest) in
            try await service.update(call.request)
        }
        Self.register(CAS.Method.BatchReadBlobs.descriptor, on: &router) { (call: BatchReadBlobsWireRequest) in
            try await service.read(call.request)
        }
    }
}
