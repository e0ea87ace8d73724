import Foundation
import StrataCore
import Testing

/// Every supported digest function hashes as its reference does (the vectors were computed with
/// Python's hashlib and the `blake3` package), streamed in any chunking, and names its blobs in its
/// own namespace.
@Suite struct DigestFunctionTests {
    /// 1 MiB + 1 KiB: more than one BLAKE3 chunk and tree level, and many SIMD batches.
    static let large = Data((0..<4099).flatMap { _ in (0..<256).map { UInt8($0) } })

    static let vectors: [(DigestFunction, [String])] = [
        (.sha1, ["da39a3ee5e6b4b0d3255bfef95601890afd80709", "a9993e364706816aba3e25717850c26c9cd0d89d",
                 "ee530133b4a64868051d615d148a51143053b615"]),
        (.sha384, ["38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b",
                   "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
                   "62dde159c675c8a05446220435c4f0ecff2b312c6b9cc6e510d3e66bbf5877df5544a37f5860d59ff3429d2c0dd39c7f"]),
        (.sha512, ["cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
                   "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
                   "32b169fff74c2478fa4448d12d44c5a2ba58707ff7663b9b63942595ec32e3695e7c640756e084624b0fc530a438e3b0a44c73d47190253b2111f16d201693c5"]),
        (.blake3, ["af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
                   "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
                   "7be4b088890cde2cc7d5db3f6b6a376ebb78b7c8d63df585e193f8da159f34eb"]),
    ]

    @Test func supportedIsExactlyWhatHashes() {
        #expect(DigestFunction.supported == [.sha256, .sha1, .sha384, .sha512, .blake3])
    }

    @Test(arguments: vectors)
    func hashesAsTheReference(function: DigestFunction, expected: [String]) throws {
        let inputs = [Data(), Data("abc".utf8), Self.large]
        for (input, hash) in zip(inputs, expected) {
            let digest = Digest.of(input, function: function)
            #expect(digest.hash == hash && digest.sizeBytes == Int64(input.count) && digest.function == function)
            #expect(digest == (try Digest(hash: hash, sizeBytes: Int64(input.count), function: function)))
            try digest.verify(input)
            // Streamed in uneven chunks, as a ByteStream upload arrives.
            var hasher = function.makeHasher()
            var offset = 0
            var step = 1
            while offset < input.count {
                let end = min(input.count, offset + step)
                hasher.update(input[offset..<end])
                offset = end
                step = step * 3 + 7
            }
            #expect(hasher.finalizeDigest() == digest && hasher.finalizeHex() == hash)
        }
        #expect(Digest.empty(function).hash == expected[0] && Digest.empty(function).isEmpty)
    }

    /// A copied hasher goes on independently (the benchmark hashes a shared prefix once and copies it).
    @Test(arguments: DigestFunction.supported)
    func copiedHasherIsIndependent(function: DigestFunction) {
        var prefix = function.makeHasher()
        prefix.update(Data("shared prefix ".utf8))
        var first = prefix
        var second = prefix
        first.update(Data("one".utf8))
        second.update(Data("two".utf8))
        #expect(first.finalizeDigest() == Digest.of(Data("shared prefix one".utf8), function: function))
        #expect(second.finalizeDigest() == Digest.of(Data("shared prefix two".utf8), function: function))
        #expect(prefix.finalizeDigest() == Digest.of(Data("shared prefix ".utf8), function: function))
    }

    /// Verification uses the digest's own function: SHA-256 bytes under a BLAKE3 digest are refused.
    @Test func wrongHashForTheFunctionIsRefused() throws {
        let data = Data("hello".utf8)
        let sha256 = Digest.of(data)
        let asBLAKE3 = try Digest(hash: sha256.hash, sizeBytes: sha256.sizeBytes, function: .blake3)
        #expect(sha256 != asBLAKE3 && sha256.key != asBLAKE3.key)
        #expect { try asBLAKE3.verify(data) } throws: {
            ($0 as? StrataError)?.code == .invalidArgument && ($0 as? StrataError)?.message.contains("BLAKE3") == true
        }
        // The empty blob is the empty blob only under its own function.
        let emptyHexAsBLAKE3 = try Digest(hash: Digest.emptySHA256.hash, sizeBytes: 0, function: .blake3)
        #expect(!emptyHexAsBLAKE3.isEmpty && Digest.empty(.blake3).isEmpty)
    }

    /// Two functions' digests with the same hex and size are distinct and strictly ordered, so sorted
    /// batches (SQL's lock order) and sets treat them as two.
    @Test func sameHexUnderTwoFunctionsAreTwoOrderedDigests() throws {
        let hex = String(repeating: "5a", count: 32)
        let sha256 = try Digest(hash: hex, sizeBytes: 9, function: .sha256)
        let blake3 = try Digest(hash: hex, sizeBytes: 9, function: .blake3)
        #expect(sha256 != blake3 && Set([sha256, blake3, sha256]).count == 2)
        #expect(sha256 < blake3 && !(blake3 < sha256))
        #expect([blake3, sha256].sorted() == [sha256, blake3])
    }

    @Test func storageNamesAreOnePerFunctionAndParseBack() throws {
        let hex = String(repeating: "ab", count: 32)
        let sha256 = try Digest(hash: hex, sizeBytes: 12, function: .sha256)
        let blake3 = try Digest(hash: hex, sizeBytes: 12, function: .blake3)
        // SHA-256 keeps the layout every existing deployment has.
        #expect(sha256.storageName == "\(hex)_12")
        #expect(blake3.storageName == "blake3/\(hex)_12")
        for function in DigestFunction.supported {
            let digest = Digest.of(Data("x".utf8), function: function)
            #expect(Digest(storageName: digest.storageName) == digest)
        }
        #expect(Digest(storageName: "\(hex)_12") == sha256)
        #expect(Digest(storageName: "blake3/\(hex)_12") == blake3)
        for name in ["sha256/\(hex)_12", "md5/\(String(repeating: "a", count: 32))_1", "blake3/\(hex)_",
                     "\(String(repeating: "a", count: 40))_1", "\(hex)_+12", "\(hex)_-1", "nope/\(hex)_1"] {
            #expect(Digest(storageName: name) == nil, "\(name)")
        }
    }

    @Test func resourceNamesCarryTheFunctionOnlyWhenItCannotBeInferred() throws {
        let hex = String(repeating: "cd", count: 32)
        #expect(try Digest(hash: hex, sizeBytes: 3, function: .sha256).resourceNamePath == "\(hex)/3")
        #expect(try Digest(hash: hex, sizeBytes: 3, function: .blake3).resourceNamePath == "blake3/\(hex)/3")
        let sha1 = Digest.of(Data("x".utf8), function: .sha1)
        #expect(sha1.resourceNamePath == "\(sha1.hash)/1")
        for function in DigestFunction.supported {
            let digest = Digest.of(Data("blob".utf8), function: function)
            #expect(try ResourceName.parseRead("i/blobs/\(digest.resourceNamePath)").digest == digest)
            #expect(try ResourceName.parseWrite("i/uploads/u/blobs/\(digest.resourceNamePath)").digest == digest)
        }
        // Without the segment, 64 hex digits are SHA-256: BLAKE3 must be named.
        #expect(try ResourceName.parseRead("blobs/\(hex)/3").digest.function == .sha256)
        #expect { try ResourceName.parseRead("blobs/md5/\(String(repeating: "a", count: 32))/3") } throws: {
            ($0 as? StrataError)?.code == .invalidArgument && ($0 as? StrataError)?.message.contains("MD5") == true
        }
    }
}
