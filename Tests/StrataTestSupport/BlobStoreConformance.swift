import Foundation
import StrataCore
import StrataStorage

/// The contract every `BlobStore` must honour, as named cases that a test target runs against its store:
///
///     @Test(arguments: BlobStoreConformance.cases)
///     func conformance(_ check: BlobStoreConformance) async throws {
///         try await check.run(on: LRUBlobStore(capacityBytes: 1 << 30))
///     }
///
/// A case throws `ConformanceFailure` naming what the store did wrong.
public struct BlobStoreConformance: Sendable, CustomStringConvertible {
    public let name: String
    let body: @Sendable (any BlobStore) async throws -> Void

    public var description: String { name }

    public func run(on store: any BlobStore) async throws { try await body(store) }

    public static let cases: [BlobStoreConformance] = [
        .init(name: "round trip", body: roundTrip),
        .init(name: "missing blobs", body: missingBlobs),
        .init(name: "empty blob is always present", body: emptyBlob),
        .init(name: "wrong hash is refused and not stored", body: wrongHash),
        .init(name: "wrong size is refused and not stored", body: wrongSize),
        .init(name: "same hash with another size is another blob", body: sameHashOtherSize),
        .init(name: "partial reads with offset and limit", body: partialReads),
        .init(name: "failing upload stream stores nothing", body: failingBody),
        .init(name: "concurrent writers of one blob", body: concurrentWriters),
        .init(name: "concurrent readers during a write", body: readersDuringWrite),
        .init(name: "large blob in bounded chunks", body: largeBlob),
        .init(name: "delete", body: delete),
        .init(name: "batch read and write", body: batches),
        .init(name: "every digest function round-trips", body: everyFunction),
        .init(name: "same hex and size under two functions are two blobs", body: sameHexTwoFunctions),
        .init(name: "a hash of another function is refused and not stored", body: otherFunctionsHash),
    ]

    static func roundTrip(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 10_000)
        try await store.write(blob.digest, data: blob.data)
        try expect(try await store.findMissing([blob.digest]).isEmpty, "a written blob is reported missing")
        let read = try await store.readAll(blob.digest)
        try expect(read == blob.data, "read returned other bytes than were written")
        // Writing it again is fine and changes nothing.
        try await store.write(blob.digest, data: blob.data)
        try expect(try await store.readAll(blob.digest) == blob.data, "a second write changed the blob")
    }

    static func missingBlobs(_ store: any BlobStore) async throws {
        let present = Blob.random(size: 100)
        let absent1 = Blob.random(size: 100).digest
        let absent2 = Blob.random(size: 5).digest
        try await store.write(present.digest, data: present.data)
        let missing = try await store.findMissing([absent1, present.digest, absent2, absent1])
        try expect(missing == [absent1, absent2], "findMissing answered \(missing), expected [\(absent1), \(absent2)] in order, once each")
        try await expectError(.notFound, "reading an absent blob") { _ = try await store.readAll(absent1) }
    }

    static func emptyBlob(_ store: any BlobStore) async throws {
        let empty = Digest.emptySHA256
        try expect(try await store.findMissing([empty]).isEmpty, "the empty blob is reported missing")
        try expect(try await store.readAll(empty).isEmpty, "the empty blob read as non-empty")
        try await store.write(empty, data: Data())
        try await expectError(.invalidArgument, "writing bytes as the empty blob") {
            try await store.write(empty, data: Data([1]))
        }
        let batch = await store.readBatch([empty])
        try expect((try? batch[0].get()) == Data(), "batch read of the empty blob failed")
    }

    static func wrongHash(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 4096)
        var corrupted = blob.data
        corrupted[17] ^= 0xff
        try await expectError(.invalidArgument, "writing bytes whose hash differs from the digest") {
            try await store.write(blob.digest, data: corrupted)
        }
        try expect(try await store.findMissing([blob.digest]) == [blob.digest], "a refused blob is reported present")
        try await expectError(.notFound, "reading a refused blob") { _ = try await store.readAll(blob.digest) }
        let results = await store.writeBatch([(blob.digest, corrupted)])
        try expectFailure(results[0], .invalidArgument, "batch-writing bytes whose hash differs")
        try expect(try await store.findMissing([blob.digest]) == [blob.digest], "a refused batch blob is reported present")
    }

    static func wrongSize(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 3000)
        let short = try Digest(hash: blob.digest.hash, sizeBytes: 2999)
        let long = try Digest(hash: blob.digest.hash, sizeBytes: 3001)
        try await expectError(.invalidArgument, "writing 3000 bytes as a 2999-byte digest") {
            try await store.write(short, data: blob.data)
        }
        try await expectError(.invalidArgument, "writing 3000 bytes as a 3001-byte digest") {
            try await store.write(long, data: blob.data)
        }
        try await expectError(.invalidArgument, "writing 2999 bytes as the right digest") {
            try await store.write(blob.digest, data: blob.data.prefix(2999))
        }
        let missing = try await store.findMissing([short, long, blob.digest])
        try expect(missing == [short, long, blob.digest], "a blob of the wrong size was stored: missing = \(missing)")
    }

    static func sameHashOtherSize(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 2048)
        try await store.write(blob.digest, data: blob.data)
        let other = try Digest(hash: blob.digest.hash, sizeBytes: 2047)
        try expect(try await store.findMissing([other]) == [other], "a digest with the right hash but another size is reported present")
        try await expectError(.notFound, "reading the right hash with another size") { _ = try await store.readAll(other) }
    }

    static func partialReads(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 5000)
        try await store.write(blob.digest, data: blob.data)
        let cases: [(Int64, Int64?, Range<Int>)] = [
            (0, nil, 0..<5000), (0, 0, 0..<5000), (100, nil, 100..<5000), (100, 50, 100..<150),
            (4999, nil, 4999..<5000), (4990, 100, 4990..<5000), (5000, nil, 5000..<5000), (0, 1, 0..<1),
        ]
        for (offset, limit, expected) in cases {
            let body = try await store.read(blob.digest, offset: offset, limit: limit)
            let data = try await body.collect(limit: 1 << 20)
            try expect(data == blob.data[expected], "read(offset: \(offset), limit: \(String(describing: limit))) returned \(data.count) wrong bytes")
        }
        try await expectError(.outOfRange, "reading at an offset past the end") {
            _ = try await store.read(blob.digest, offset: 5001, limit: nil)
        }
        try await expectError(.outOfRange, "reading at a negative offset") {
            _ = try await store.read(blob.digest, offset: -1, limit: nil)
        }
        try await expectError(.invalidArgument, "reading with a negative limit") {
            _ = try await store.read(blob.digest, offset: 0, limit: -1)
        }
    }

    static func failingBody(_ store: any BlobStore) async throws {
        struct Broken: Error {}
        let blob = Blob.random(size: 3 << 20)
        let body = BlobBody {
            var sent = 0
            return BlobBody.AsyncIterator {
                guard sent < 2 else { throw Broken() }
                sent += 1
                return blob.data[((sent - 1) << 20)..<(sent << 20)]
            }
        }
        do {
            try await store.write(blob.digest, body: body)
            throw ConformanceFailure("a write whose stream failed succeeded")
        } catch is Broken {
        } catch let error as StrataError where error.code == .cancelled || error.code == .unknown || error.code == .internal {
        }
        try expect(try await store.findMissing([blob.digest]) == [blob.digest], "a blob whose upload failed is reported present")
    }

    static func concurrentWriters(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 2 << 20)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask { try await store.write(blob.digest, body: BlobBody(data: blob.data, chunkSize: 64 << 10)) }
            }
            try await group.waitForAll()
        }
        try expect(try await store.readAll(blob.digest) == blob.data, "concurrent writers left wrong bytes")
    }

    static func readersDuringWrite(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 1 << 20)
        let chunk = 64 << 10
        let slowBody = BlobBody {
            var position = 0
            return BlobBody.AsyncIterator {
                guard position < blob.data.count else { return nil }
                try await Task.sleep(for: .milliseconds(5))
                defer { position += chunk }
                return blob.data[position..<min(position + chunk, blob.data.count)]
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await store.write(blob.digest, body: slowBody) }
            for _ in 0..<4 {
                group.addTask {
                    for _ in 0..<30 {
                        do {
                            let data = try await store.readAll(blob.digest)
                            try expect(data == blob.data, "a reader saw \(data.count) bytes of a blob being written")
                        } catch let error as StrataError where error.code == .notFound {}
                        try await Task.sleep(for: .milliseconds(3))
                    }
                }
            }
            try await group.waitForAll()
        }
        try expect(try await store.readAll(blob.digest) == blob.data, "the blob is wrong after the write")
    }

    static func largeBlob(_ store: any BlobStore) async throws {
        let size = 24 << 20
        let blob = Blob.random(size: size)
        try await store.write(blob.digest, body: BlobBody(data: blob.data, chunkSize: 16 << 10))
        var hasher = BlobHasher()
        var largestChunk = 0
        for try await chunk in try await store.read(blob.digest, offset: 0, limit: nil) {
            largestChunk = max(largestChunk, chunk.count)
            hasher.update(chunk)
        }
        try expect(hasher.byteCount == size && hasher.finalizeHex() == blob.digest.hash, "a large blob read back wrong")
        try expect(largestChunk <= 4 << 20, "a read chunk was \(largestChunk) bytes; chunks must stay bounded")
    }

    static func delete(_ store: any BlobStore) async throws {
        let kept = Blob.random(size: 700)
        let gone = Blob.random(size: 800)
        try await store.write(kept.digest, data: kept.data)
        try await store.write(gone.digest, data: gone.data)
        try await store.delete([gone.digest, Blob.random(size: 1).digest])
        try expect(try await store.findMissing([kept.digest, gone.digest]) == [gone.digest], "delete removed the wrong blobs")
        try await expectError(.notFound, "reading a deleted blob") { _ = try await store.readAll(gone.digest) }
        try await store.delete([Digest.emptySHA256])
        try expect(try await store.findMissing([Digest.emptySHA256]).isEmpty, "deleting the empty blob made it missing")
    }

    static func batches(_ store: any BlobStore) async throws {
        let good = (0..<20).map { Blob.random(size: 100 + $0) }
        let bad = Blob.random(size: 64)
        var writes = good.map { ($0.digest, $0.data) }
        writes.insert((bad.digest, Data(repeating: 0, count: 64)), at: 7)
        let written = await store.writeBatch(writes.map { (digest: $0.0, data: $0.1) })
        try expect(written.count == writes.count, "writeBatch answered \(written.count) results for \(writes.count) blobs")
        for (index, result) in written.enumerated() {
            if index == 7 { try expectFailure(result, .invalidArgument, "batch blob with a wrong hash") } else {
                if case .failure(let error) = result { throw ConformanceFailure("batch write \(index) failed: \(error)") }
            }
        }
        let absent = Blob.random(size: 10).digest
        let reads = await store.readBatch([good[3].digest, absent, good[19].digest])
        try expect((try? reads[0].get()) == good[3].data, "batch read returned wrong bytes")
        try expectFailure(reads[1], .notFound, "batch read of an absent blob")
        try expect((try? reads[2].get()) == good[19].data, "batch read returned wrong bytes")
    }
}

public struct ConformanceFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension BlobStoreConformance {
    /// Every supported function: written, found, read whole, in part and in batches, its empty blob
    /// present, each blob under its own function only.
    static func everyFunction(_ store: any BlobStore) async throws {
        for function in DigestFunction.supported {
            let blob = Blob.random(size: 3000, function: function)
            try await store.write(blob.digest, data: blob.data)
            try expect(try await store.findMissing([blob.digest]).isEmpty, "a written \(function) blob is reported missing")
            try expect(try await store.readAll(blob.digest) == blob.data, "a \(function) blob read back differently")
            let part = try await store.read(blob.digest, offset: 100, limit: 50).collect(limit: 50)
            try expect(part == blob.data[100..<150], "a partial read of a \(function) blob returned other bytes")
            let batched = [Blob.random(size: 10, function: function), Blob.random(size: 20, function: function)]
            let written = await store.writeBatch(batched.map { ($0.digest, $0.data) })
            for result in written { try result.get() }
            let read = await store.readBatch(batched.map(\.digest))
            for (blob, result) in zip(batched, read) {
                try expect((try? result.get()) == blob.data, "a batch read of a \(function) blob failed or differed")
            }
            let empty = Digest.empty(function)
            try expect(try await store.findMissing([empty]).isEmpty, "the \(function) empty blob is reported missing")
            try expect(try await store.readAll(empty).isEmpty, "the \(function) empty blob read as non-empty")
        }
    }

    /// A BLAKE3 and a SHA-256 digest with the same 64 hex digits and size name two blobs: storing one
    /// does not make the other present, nor readable with the first one's bytes.
    static func sameHexTwoFunctions(_ store: any BlobStore) async throws {
        let blake3 = Blob.random(size: 1000, function: .blake3)
        let sameHexSHA256 = try Digest(hash: blake3.digest.hash, sizeBytes: blake3.digest.sizeBytes, function: .sha256)
        try await store.write(blake3.digest, data: blake3.data)
        try expect(try await store.findMissing([sameHexSHA256]) == [sameHexSHA256],
                   "a BLAKE3 blob made the SHA-256 digest with the same hex present")
        try await expectError(.notFound, "reading the SHA-256 digest with a stored BLAKE3 blob's hex") {
            _ = try await store.readAll(sameHexSHA256)
        }
        try expectFailure(await store.readBatch([sameHexSHA256])[0], .notFound, "batch-reading the SHA-256 twin of a BLAKE3 blob")
        let sha256 = Blob.random(size: 1000)
        let sameHexBLAKE3 = try Digest(hash: sha256.digest.hash, sizeBytes: sha256.digest.sizeBytes, function: .blake3)
        _ = await store.writeBatch([(sha256.digest, sha256.data)])
        let absentSHA256 = Blob.random(size: 7).digest
        let missing = try await store.findMissing([sameHexBLAKE3, sha256.digest, absentSHA256, blake3.digest])
        try expect(missing == [sameHexBLAKE3, absentSHA256],
                   "findMissing of two functions' digests answered \(missing), expected [\(sameHexBLAKE3) (BLAKE3), \(absentSHA256)] in order")
        let blake3Read = try await store.readAll(blake3.digest)
        let sha256Read = try await store.readAll(sha256.digest)
        try expect(blake3Read == blake3.data && sha256Read == sha256.data, "two functions' blobs read back differently")
    }

    /// Bytes whose SHA-256 is the digest's hex, under a digest of another function, are refused.
    static func otherFunctionsHash(_ store: any BlobStore) async throws {
        let blob = Blob.random(size: 2000)
        let asBLAKE3 = try Digest(hash: blob.digest.hash, sizeBytes: blob.digest.sizeBytes, function: .blake3)
        try await expectError(.invalidArgument, "writing SHA-256-hashed bytes under a BLAKE3 digest of the same hex") {
            try await store.write(asBLAKE3, data: blob.data)
        }
        try expectFailure(await store.writeBatch([(asBLAKE3, blob.data)])[0], .invalidArgument,
                          "batch-writing SHA-256-hashed bytes under a BLAKE3 digest")
        try expect(try await store.findMissing([asBLAKE3, blob.digest]) == [asBLAKE3, blob.digest],
                   "a refused blob is reported present under either function")
        let sha512 = Blob.random(size: 500, function: .sha512)
        var corrupted = sha512.data
        corrupted[3] ^= 1
        try await expectError(.invalidArgument, "writing bytes whose SHA-512 differs from the digest") {
            try await store.write(sha512.digest, data: corrupted)
        }
        try expect(try await store.findMissing([sha512.digest]) == [sha512.digest], "a refused SHA-512 blob is reported present")
    }
}

public func expect(_ condition: Bool, _ message: String) throws {
    if !condition { throw ConformanceFailure(message) }
}

public func expectError(
    _ code: StrataError.Code, _ what: String, _ operation: () async throws -> Void
) async throws {
    do {
        try await operation()
    } catch let error as StrataError {
        guard error.code == code else { throw ConformanceFailure("\(what): got \(error), expected \(code)") }
        return
    }
    throw ConformanceFailure("\(what) succeeded; expected \(code)")
}

public func expectFailure<T>(_ result: Result<T, StrataError>, _ code: StrataError.Code, _ what: String) throws {
    switch result {
    case .success: throw ConformanceFailure("\(what) succeeded; expected \(code)")
    case .failure(let error):
        guard error.code == code else { throw ConformanceFailure("\(what): got \(error), expected \(code)") }
    }
}

/// Test data with its digest.
public struct Blob: Sendable {
    public let data: Data
    public let digest: Digest

    public init(_ data: Data, function: DigestFunction = .sha256) {
        self.data = data
        self.digest = Digest.of(data, function: function)
    }

    /// Random bytes from SplitMix64 seeded by the system: the system generator costs a syscall per
    /// 8 bytes, and megabytes of it kept the (one thread per core) cooperative pool busy for seconds,
    /// stalling every other test of the run.
    public static func random(size: Int, function: DigestFunction = .sha256) -> Blob {
        var state = UInt64.random(in: .min ... .max)
        var words = [UInt64](repeating: 0, count: (size + 7) / 8)
        for index in words.indices {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            words[index] = z ^ (z >> 31)
        }
        let data = words.withUnsafeBytes { Data($0.prefix(size)) }
        return Blob(data, function: function)
    }
}

/// Compressible but not trivial test data: text from a small vocabulary in an order drawn from `seed`
/// (random unless given), so zstd shrinks it several times over and two seeds give two blobs.
public func compressibleBlob(size: Int, seed: UInt64 = .random(in: .min ... .max)) -> Blob {
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta ", "eta ", "theta\n"].map { Array($0.utf8) }
    var state = seed &+ UInt64(size)
    var bytes: [UInt8] = []
    bytes.reserveCapacity(size + 8)
    while bytes.count < size {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        bytes += words[Int(state >> 61)]
    }
    return Blob(Data(bytes.prefix(size)))
}
