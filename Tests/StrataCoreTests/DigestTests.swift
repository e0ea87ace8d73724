import Foundation
import StrataCore
import Testing

@Suite struct DigestTests {
    let hello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

    @Test func computesSHA256() throws {
        #expect(Digest.of(Data("hello".utf8)).hash == hello)
        #expect(Digest.emptySHA256.hash == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(Digest.emptySHA256.isEmpty)
        #expect(!(try Digest(hash: hello, sizeBytes: 0)).isEmpty)
    }

    @Test(arguments: [
        ("abc", Int64(1), "64 hex characters"),
        (String(repeating: "g", count: 64), Int64(1), "not hex"),
        (String(repeating: "A", count: 64), Int64(1), "lower-case"),
        (String(repeating: "a", count: 64), Int64(-1), "negative"),
        ("", Int64(0), "64 hex characters"),
    ])
    func rejectsMalformed(hash: String, size: Int64, message: String) {
        #expect {
            _ = try Digest(hash: hash, sizeBytes: size)
        } throws: { error in
            guard let error = error as? StrataError else { return false }
            return error.code == .invalidArgument && error.message.contains(message)
        }
    }

    @Test func resolvesDigestFunctions() throws {
        #expect(try DigestFunction.resolve(protoValue: 0, hash: hello) == .sha256)
        #expect(try DigestFunction.resolve(protoValue: 1, hash: nil) == .sha256)
        for value in [3, 4, 7, 8, 10, 99] {
            #expect(throws: StrataError.self) { try DigestFunction.resolve(protoValue: value, hash: nil) }
        }
        #expect(try DigestFunction.resolve(protoValue: 9, hash: hello) == .blake3)
        #expect(try DigestFunction.resolve(protoValue: 0, hash: String(repeating: "a", count: 40)) == .sha1)
        #expect(try DigestFunction.resolve(protoValue: 0, hash: String(repeating: "a", count: 96)) == .sha384)
        #expect(try DigestFunction.resolve(protoValue: 0, hash: String(repeating: "a", count: 128)) == .sha512)
        // An MD5-length hash is inferred as MD5 (or MURMUR3), which is refused with a message naming it.
        #expect {
            try DigestFunction.resolve(protoValue: 0, hash: String(repeating: "a", count: 32))
        } throws: { ($0 as? StrataError)?.message.contains("MD5") == true }
    }

    @Test func verifyingBodyRefusesWrongBytes() async throws {
        let data = Data("hello".utf8)
        let digest = Digest.of(data)
        let good = try await BlobBody(data: data, chunkSize: 2).verifying(digest).collect(limit: 100)
        #expect(good == data)
        await #expect(throws: StrataError.self) {
            _ = try await BlobBody(data: Data("hellp".utf8)).verifying(digest).collect(limit: 100)
        }
        await #expect(throws: StrataError.self) {
            _ = try await BlobBody(data: Data("hello!".utf8)).verifying(digest).collect(limit: 100)
        }
        await #expect(throws: StrataError.self) {
            _ = try await BlobBody(data: Data("hell".utf8)).verifying(digest).collect(limit: 100)
        }
    }

    @Test func lruDictionaryEvictsLeastRecentlyUsed() {
        var lru = LRUDictionary<String, Int>(capacity: 3)
        lru.insert("a", 1, cost: 1)
        lru.insert("b", 2, cost: 1)
        lru.insert("c", 3, cost: 1)
        #expect(lru.get("a") == 1)
        lru.insert("d", 4, cost: 1)
        #expect(!lru.contains("b"))
        #expect(lru.contains("a") && lru.contains("c") && lru.contains("d"))
        #expect(lru.insert("big", 9, cost: 4) == false)
        lru.insert("e", 5, cost: 2)
        #expect(lru.totalCost <= 3)
        #expect(lru.contains("e") && lru.contains("d"))
        #expect(lru.remove("e") == 5)
        #expect(lru.totalCost == 1)
    }

    @Test func firstBadCharacterDecidesTheMessage() {
        func message(_ hash: String) -> String? {
            do { _ = try Digest(hash: hash, sizeBytes: 1); return nil } catch { return error.message }
        }
        #expect(message("A" + String(repeating: "g", count: 63))?.contains("lower-case") == true)
        #expect(message("g" + String(repeating: "A", count: 63))?.contains("not hex") == true)
    }

    @Test func keyIdentifiesHashAndSize() throws {
        let digest = try Digest(hash: hello, sizeBytes: 5)
        #expect(digest.key == Digest.of(Data("hello".utf8)).key)
        #expect(digest == Digest.of(Data("hello".utf8)))
        #expect(digest.key.w0 == 0x2cf2_4dba_5fb0_a30e && digest.key.w3 == 0x7304_3362_938b_9824)
        #expect(digest.key != (try Digest(hash: hello, sizeBytes: 6)).key)
        // Hashes that differ in any word are different keys and different digests.
        for position in [0, 20, 40, 63] {
            var bytes = Array(hello.utf8)
            bytes[position] = bytes[position] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
            let other = try Digest(hash: String(decoding: bytes, as: UTF8.self), sizeBytes: 5)
            #expect(other.key != digest.key && other != digest)
        }
        #expect(Set([digest, try Digest(hash: hello, sizeBytes: 5), try Digest(hash: hello, sizeBytes: 6)]).count == 2)
    }

    /// A digest keeps its hash as words and writes the hex out on demand: the hex must round-trip for
    /// every supported length (SHA-1's 40 characters fill part of a word, SHA-512's overflow the key),
    /// and ordering must be the hex's, as SQL's ORDER BY and sorted listings see it.
    @Test func hexRoundTripsAndOrdersAsText() throws {
        var generator = SystemRandomNumberGenerator()
        let hexDigits = Array("0123456789abcdef")
        func randomHex(_ count: Int) -> String { String((0..<count).map { _ in hexDigits.randomElement(using: &generator)! }) }
        for function in [DigestFunction.sha256, .sha1, .md5, .sha512, .vso] {
            var digests: [Digest] = []
            for _ in 0..<200 {
                let hex = randomHex(function.hexLength)
                let digest = try Digest(hash: hex, sizeBytes: Int64.random(in: 0..<3), function: function)
                #expect(digest.hash == hex && digest.function == function)
                digests.append(digest)
            }
            // Shared prefixes, so that later words decide.
            digests.append(try Digest(hash: String(digests[0].hash.dropLast()) + "0", sizeBytes: 1, function: function))
            digests.append(try Digest(hash: String(digests[0].hash.dropLast()) + "f", sizeBytes: 1, function: function))
            let byText = digests.sorted { ($0.hash, $0.sizeBytes) < ($1.hash, $1.sizeBytes) }
            #expect(digests.sorted() == byText, "\(function)")
        }
        let computed = Digest.of(Data("hello".utf8))
        #expect(computed.hash == hello && computed.key.hex == hello)
    }

    @Test func lruDictionaryReusesSlotsAndKeepsOrder() {
        var lru = LRUDictionary<Int, String>(capacity: 100)
        for key in 0..<10 { lru.insert(key, "v\(key)", cost: 1) }
        for key in [0, 2, 4] { #expect(lru.remove(key) == "v\(key)") }
        #expect(lru.get(1) == "v1")
        for key in 10..<13 { lru.insert(key, "v\(key)", cost: 1) }
        lru.insert(3, "three", cost: 5)
        #expect(lru.count == 10 && lru.totalCost == 14)
        var order: [Int] = []
        while let oldest = lru.removeLeastRecent() { order.append(oldest.key) }
        #expect(order == [5, 6, 7, 8, 9, 1, 10, 11, 12, 3])
        #expect(lru.count == 0 && lru.totalCost == 0)
    }
}
