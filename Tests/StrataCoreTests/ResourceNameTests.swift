import StrataCore
import Testing

@Suite struct ResourceNameTests {
    let hash = String(repeating: "ab", count: 32)

    @Test func parsesReads() throws {
        let plain = try ResourceName.parseRead("blobs/\(hash)/42")
        #expect(plain.instanceName == "" && plain.digest.sizeBytes == 42 && plain.compressor == nil)
        let nested = try ResourceName.parseRead("team/a/blobs/\(hash)/0")
        #expect(nested.instanceName == "team/a")
        let explicit = try ResourceName.parseRead("x/blobs/sha256/\(hash)/7")
        #expect(explicit.instanceName == "x" && explicit.digest.sizeBytes == 7)
        let compressed = try ResourceName.parseRead("compressed-blobs/zstd/\(hash)/7")
        #expect(compressed.compressor == "zstd")
    }

    @Test func parsesWrites() throws {
        let name = try ResourceName.parseWrite("main/uploads/1234-uuid/blobs/\(hash)/99/some/metadata")
        #expect(name.instanceName == "main" && name.uploadID == "1234-uuid" && name.digest.sizeBytes == 99)
        let bare = try ResourceName.parseWrite("uploads/u/blobs/\(hash)/1")
        #expect(bare.instanceName == "")
    }

    @Test(arguments: [
        "", "blobs", "blobs/\(String(repeating: "ab", count: 32))", "blobs/xyz/1",
        "blobs/\(String(repeating: "ab", count: 32))/-1", "blobs/\(String(repeating: "ab", count: 32))/1x",
        "blobs/\(String(repeating: "ab", count: 32))/1/extra", "a//b/blobs/\(String(repeating: "ab", count: 32))/1",
        "blobs/md5/\(String(repeating: "ab", count: 16))/1", "nothing/here",
        "blobs/\(String(repeating: "ab", count: 16))/1", "blobs/blake3/\(String(repeating: "ab", count: 20))/1",
    ])
    func rejectsBadReads(_ name: String) {
        #expect {
            _ = try ResourceName.parseRead(name)
        } throws: { ($0 as? StrataError)?.code == .invalidArgument }
    }

    @Test(arguments: [
        "blobs/\(String(repeating: "ab", count: 32))/1", "uploads//blobs/\(String(repeating: "ab", count: 32))/1",
        "uploads/u/\(String(repeating: "ab", count: 32))/1", "uploads/u/blobs/\(String(repeating: "ab", count: 32))",
        "uploads/u/blobs/\(String(repeating: "ab", count: 32))/+1",
    ])
    func rejectsBadWrites(_ name: String) {
        #expect {
            _ = try ResourceName.parseWrite(name)
        } throws: { ($0 as? StrataError)?.code == .invalidArgument }
    }
}
