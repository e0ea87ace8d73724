import Foundation
import GRPCCore
import StrataAPI
import StrataCore
import SwiftProtobuf
import Testing

@testable import StrataServer

/// The hand-written codecs of FindMissingBlobs, BatchUpdateBlobs and BatchReadBlobs read and write
/// exactly what swift-protobuf's generated messages do.
@Suite struct CASWireTests {
    typealias FMBRequest = Build_Bazel_Remote_Execution_V2_FindMissingBlobsRequest
    typealias FMBResponse = Build_Bazel_Remote_Execution_V2_FindMissingBlobsResponse
    typealias UpdateRequest = Build_Bazel_Remote_Execution_V2_BatchUpdateBlobsRequest
    typealias UpdateResponse = Build_Bazel_Remote_Execution_V2_BatchUpdateBlobsResponse
    typealias ReadRequest = Build_Bazel_Remote_Execution_V2_BatchReadBlobsRequest
    typealias ReadResponse = Build_Bazel_Remote_Execution_V2_BatchReadBlobsResponse

    static let good = Digest.of(Data("hello".utf8))

    /// Digests a client may send, valid or not: each must come through as sent.
    static let digests: [ProtoDigest] = [
        Self.good.proto,
        .with { $0.hash = Self.good.hash; $0.sizeBytes = 0 },
        .with { $0.hash = Self.good.hash.uppercased(); $0.sizeBytes = 5 },
        .with { $0.hash = String(Self.good.hash.dropLast()) + "g"; $0.sizeBytes = 5 },
        .with { $0.hash = String(Self.good.hash.prefix(40)); $0.sizeBytes = 5 },
        .with { $0.hash = ""; $0.sizeBytes = 7 },
        .with { $0.hash = Self.good.hash; $0.sizeBytes = -3 },
        .with { $0.hash = Self.good.hash + Self.good.hash; $0.sizeBytes = Int64.max },
        .with { $0.hash = "é"; $0.sizeBytes = 1 },
    ]

    /// What the service sees of each digest must not depend on the path it came by.
    static func same(_ lhs: RequestDigest, _ rhs: RequestDigest) -> Bool {
        lhs.key == rhs.key && lhs.text == rhs.text
    }

    static func decode<M: WireDecodable>(_ message: some SwiftProtobuf.Message, as: M.Type, extra: [UInt8] = []) throws -> M {
        let bytes: [UInt8] = try message.serializedBytes() + extra
        return try WireDeserializer<M>().deserialize(bytes)
    }

    static func encode<M: WireEncodable>(_ message: M) throws -> [UInt8] {
        try WireSerializer<M>().serialize(message)
    }

    @Test func findMissingBlobsRequestsDecodeAsSwiftProtobufDoes() throws {
        let proto = FMBRequest.with {
            $0.instanceName = "main/é"
            $0.blobDigests = Self.digests
            $0.digestFunction = .sha256
        }
        // An unknown field (99, a string) after the known ones is skipped, as protobuf requires.
        let unknown: [UInt8] = [0x9a, 0x06, 0x02, 0x41, 0x42]
        let wire = try Self.decode(proto, as: FindMissingBlobsWireRequest.self, extra: unknown).request
        #expect(wire.instanceName == proto.instanceName)
        #expect(wire.digestFunction == 1)
        #expect(wire.entries.count == Self.digests.count)
        for (decoded, sent) in zip(wire.entries, Self.digests) {
            #expect(Self.same(decoded, RequestDigest(hash: sent.hash, sizeBytes: sent.sizeBytes)), "\(sent)")
            #expect(decoded.proto == sent)
        }
        #expect(wire.entries[0].text == nil && (try? wire.entries[0].validated(for: .sha256)) == Self.good)
        #expect(wire.entries[2].text != nil, "upper-case hex is kept as sent, to be refused")
    }

    @Test func batchRequestsDecodeAsSwiftProtobufDoes() throws {
        let read = ReadRequest.with {
            $0.instanceName = "x"
            $0.digests = Self.digests
            $0.acceptableCompressors = [.identity, .zstd]
            $0.digestFunction = .sha256
        }
        let decodedRead = try Self.decode(read, as: BatchReadBlobsWireRequest.self).request
        #expect(decodedRead.instanceName == "x" && decodedRead.digestFunction == 1)
        #expect(decodedRead.entries.map(\.proto) == Self.digests)

        let update = UpdateRequest.with {
            $0.instanceName = "y"
            $0.requests = Self.digests.enumerated().map { index, digest in
                .with {
                    $0.digest = digest
                    $0.data = Data(repeating: UInt8(index), count: index)
                    $0.compressor = index == 3 ? .zstd : .identity
                }
            }
            $0.digestFunction = .sha256
        }
        let decodedUpdate = try Self.decode(update, as: BatchUpdateBlobsWireRequest.self).request
        #expect(decodedUpdate.instanceName == "y" && decodedUpdate.digestFunction == 1)
        #expect(decodedUpdate.entries.map(\.digest.proto) == Self.digests)
        #expect(decodedUpdate.entries.map(\.data) == update.requests.map(\.data))
        #expect(decodedUpdate.entries.map(\.compressor) == update.requests.map(\.compressor.rawValue))
    }

    /// 64 hex digits decoded off the wire serve any 256-bit function (BLAKE3 as well as SHA-256); a
    /// hash of an unsupported function's length is refused with that function's name.
    @Test func requestDigestsValidateForTheRequestsFunction() throws {
        let hex = String(repeating: "0f", count: 32)
        let decoded = RequestDigest(hash: hex, sizeBytes: 5)
        #expect(try decoded.validated(for: .blake3) == (try Digest(hash: hex, sizeBytes: 5, function: .blake3)))
        #expect(try decoded.validated(for: .sha256) == (try Digest(hash: hex, sizeBytes: 5, function: .sha256)))
        #expect(throws: StrataError.self) { try decoded.validated(for: .sha512) }
        let md5Length = RequestDigest(hash: String(repeating: "a", count: 32), sizeBytes: 1)
        #expect { try md5Length.validated(for: .sha256) } throws: {
            ($0 as? StrataError)?.code == .invalidArgument && ($0 as? StrataError)?.message.contains("MD5") == true
        }
    }

    @Test func malformedRequestsAreInvalidArgument() throws {
        let bytes: [UInt8] = try FMBRequest.with { $0.blobDigests = [Self.good.proto] }.serializedBytes()
        // Truncated; a length past the end; hash not UTF-8; wire type 7; a stray end group; an end
        // group that closes another; a field number over 2^29 - 1.
        for broken in [Array(bytes.dropLast()), [0x12, 0x80], [0x12, 0x04, 0x0a, 0x02, 0xff, 0xfe], [0x07], [0x9c, 0x06],
                       [0x9b, 0x06, 0xa4, 0x06], [0x80, 0x80, 0x80, 0x80, 0x20, 0x00]] as [[UInt8]] {
            #expect(throws: (any Error).self, "\(broken)") { _ = try FMBRequest(serializedBytes: broken) }
            #expect {
                _ = try WireDeserializer<FindMissingBlobsWireRequest>().deserialize(broken)
            } throws: { ($0 as? RPCError)?.code == .invalidArgument }
        }
        // Groups nested past the depth limit are refused without exhausting the stack.
        func nested(_ depth: Int) -> [UInt8] {
            Array(repeating: [UInt8]([0x9b, 0x06]), count: depth).flatMap { $0 } + Array(repeating: [UInt8]([0x9c, 0x06]), count: depth).flatMap { $0 }
        }
        #expect((try? WireDeserializer<FindMissingBlobsWireRequest>().deserialize(nested(10))) != nil)
        #expect(throws: RPCError.self) { _ = try WireDeserializer<FindMissingBlobsWireRequest>().deserialize(nested(100_000)) }
    }

    /// What protobuf parsers accept is accepted alike: a known field with another wire type is an
    /// unknown field, groups are skipped, and a message field sent twice is merged.
    @Test func oddButValidRequestsDecodeAsSwiftProtobufDoes() throws {
        let valid: [UInt8] = try FMBRequest.with { $0.instanceName = "x"; $0.blobDigests = [Self.good.proto] }.serializedBytes()
        let group: [UInt8] = [0x9b, 0x06, 0x08, 0x01, 0x9b, 0x06, 0x9c, 0x06, 0x9c, 0x06] // field 99, nested once
        for bytes in [[0x10, 0x01], valid + group, group + valid, valid + [0x11, 1, 2, 3, 4, 5, 6, 7, 8]] as [[UInt8]] {
            let theirs = try FMBRequest(serializedBytes: bytes)
            let ours = try WireDeserializer<FindMissingBlobsWireRequest>().deserialize(bytes).request
            #expect(ours.instanceName == theirs.instanceName)
            #expect(ours.entries.map(\.proto) == theirs.blobDigests.map { digest in .with { $0.hash = digest.hash; $0.sizeBytes = digest.sizeBytes } })
        }
        // One blob whose digest arrives in two parts: the hash, then the size.
        let hashPart = try ProtoDigest.with { $0.hash = Self.good.hash }.serializedBytes() as [UInt8]
        let sizePart = try ProtoDigest.with { $0.sizeBytes = 5 }.serializedBytes() as [UInt8]
        var entry: [UInt8] = [0x0a, UInt8(hashPart.count)] + hashPart + [0x0a, UInt8(sizePart.count)] + sizePart
        entry += [0x12, 0x05] + Array("hello".utf8)
        let request: [UInt8] = [0x12, UInt8(entry.count)] + entry
        let theirs = try UpdateRequest(serializedBytes: request)
        let ours = try WireDeserializer<BatchUpdateBlobsWireRequest>().deserialize(request).request
        #expect(theirs.requests[0].digest == Self.good.proto)
        #expect(ours.entries.map(\.digest.proto) == [Self.good.proto] && ours.entries[0].data == Data("hello".utf8))
    }

    /// Bad bytes never crash the decoder, and whatever both decoders accept, they read alike.
    @Test func mutatedRequestsNeverCrashAndAgreeWithSwiftProtobuf() throws {
        let valid: [UInt8] = try FMBRequest.with {
            $0.instanceName = "main"
            $0.blobDigests = Self.digests
            $0.digestFunction = .sha256
        }.serializedBytes()
        var generator = SystemRandomNumberGenerator()
        var agreed = 0
        for _ in 0..<3000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                case 1: bytes.removeSubrange(Int.random(in: 0..<bytes.count, using: &generator)...)
                default: bytes.insert(UInt8.random(in: 0...255, using: &generator), at: Int.random(in: 0...bytes.count, using: &generator))
                }
                if bytes.isEmpty { bytes = [0x0a, 0x00] }
            }
            let ours = try? WireDeserializer<FindMissingBlobsWireRequest>().deserialize(bytes).request
            guard let ours, let theirs = try? FMBRequest(serializedBytes: bytes) else { continue }
            #expect(ours.instanceName == theirs.instanceName && ours.digestFunction == theirs.digestFunction.rawValue)
            // Unknown fields inside a digest are kept by swift-protobuf and skipped here: compare values.
            #expect(ours.entries.map { "\($0.proto.hash)/\($0.sizeBytes)" } == theirs.blobDigests.map { "\($0.hash)/\($0.sizeBytes)" })
            agreed += 1
        }
        #expect(agreed > 0)
    }

    @Test func answersEncodeAsSwiftProtobufDoes() throws {
        let missing = [Self.good, try Digest(hash: String(repeating: "0", count: 64), sizeBytes: 0),
                       try Digest(hash: String(repeating: "ab", count: 48), sizeBytes: 9, function: .sha384)]
        let fmb = try FMBResponse(serializedBytes: try Self.encode(MissingDigests(digests: missing)))
        #expect(fmb == .with { $0.missingBlobDigests = missing.map(\.proto) })

        let requestDigests = Self.digests.map { RequestDigest(hash: $0.hash, sizeBytes: $0.sizeBytes) }
        let errors: [StrataError?] = requestDigests.indices.map { index in
            switch index % 3 {
            case 0: nil
            case 1: .invalidArgument("blob \(index): wrong é")
            default: StrataError(.resourceExhausted, "")
            }
        }
        let statuses = BlobsUploadStatuses(entries: Array(zip(requestDigests, errors)))
        let update = try UpdateResponse(serializedBytes: try Self.encode(statuses))
        #expect(update == statuses.proto)
        #expect(update.responses[1].status.code == Int32(StrataError.Code.invalidArgument.rawValue))
        #expect(update.responses[0].hasStatus && update.responses[0].status.code == 0)

        let results: [Result<Data, StrataError>] = requestDigests.indices.map { index in
            switch index % 3 {
            case 0: .success(Data(repeating: 7, count: index * 100))
            case 1: .failure(.notFound("blob \(index) is not in the CAS"))
            default: .success(Data())
            }
        }
        let blobs = ReadBlobs(entries: Array(zip(requestDigests, results)))
        let read = try ReadResponse(serializedBytes: try Self.encode(blobs))
        #expect(read == blobs.proto)
        #expect(read.responses[3].data.count == 300 && read.responses[1].status.code == Int32(StrataError.Code.notFound.rawValue))
    }
}
