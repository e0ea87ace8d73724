import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import Testing
@testable import StrataWorker

@Suite("Worker input staging")
struct InputStagingTests {
    /// A tree with what inputs can hold: files (one executable, two with the same bytes), a symlink,
    /// an empty file and an empty directory.
    static func makeTree(_ fixture: WorkerFixture) throws -> String {
        let tree = try fixture.newDirectory("tree-" + UUID().uuidString)
        try write("alpha\n", to: tree + "/a.txt")
        try write("#!/bin/sh\necho run\n", to: tree + "/bin/run.sh", executable: true)
        try write("alpha\n", to: tree + "/nested/deeper/same-as-a.txt")
        try write("", to: tree + "/empty-file")
        try FileManager.default.createDirectory(atPath: tree + "/empty-dir", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: tree + "/link", withDestinationPath: "a.txt")
        return tree
    }

    static func checkStaged(_ root: String) throws {
        #expect(contents(root + "/a.txt") == "alpha\n")
        #expect(contents(root + "/nested/deeper/same-as-a.txt") == "alpha\n")
        #expect(contents(root + "/bin/run.sh") == "#!/bin/sh\necho run\n")
        #expect(access(root + "/bin/run.sh", X_OK) == 0)
        #expect(((try FileManager.default.attributesOfItem(atPath: root + "/a.txt"))[.posixPermissions] as? Int).map { $0 & 0o111 } == 0)
        #expect(contents(root + "/empty-file") == "")
        #expect((try FileManager.default.contentsOfDirectory(atPath: root + "/empty-dir")).isEmpty)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: root + "/link") == "a.txt")
    }

    @Test("a second action with the same inputs downloads nothing: files and Directory messages come from the cache")
    func secondStagingReadsNothing() async throws {
        try await withWorkerFixture { fixture in
            let root = try await fixture.upload(try Self.makeTree(fixture))
            let stager = InputStager(store: fixture.remote, cache: fixture.cache)
            fixture.store.resetCounts()

            let first = try fixture.newDirectory()
            let summary = try await stager.stage(root: root, into: first)
            try Self.checkStaged(first)
            #expect(summary.fetchedBlobs > 0)
            #expect(fixture.store.totalReads == summary.fetchedBlobs)

            fixture.store.resetCounts()
            let second = try fixture.newDirectory()
            let again = try await stager.stage(root: root, into: second)
            try Self.checkStaged(second)
            #expect(again.fetchedBlobs == 0)
            #expect(fixture.store.totalReads == 0, "the second staging read \(fixture.store.totalReads) blobs from the CAS")
            // Hard links, not copies.
            let inode1 = (try FileManager.default.attributesOfItem(atPath: first + "/a.txt"))[.systemFileNumber] as? Int
            let inode2 = (try FileManager.default.attributesOfItem(atPath: second + "/a.txt"))[.systemFileNumber] as? Int
            #expect(inode1 != nil && inode1 == inode2)
        }
    }

    @Test("a cache file changed on disk (an action wrote through its hard link) is fetched again, never used")
    func corruptCacheEntryIsRefetched() async throws {
        try await withWorkerFixture { fixture in
            let root = try await fixture.upload(try Self.makeTree(fixture))
            let stager = InputStager(store: fixture.remote, cache: fixture.cache)
            let first = try fixture.newDirectory()
            _ = try await stager.stage(root: root, into: first)
            // Same length, other bytes, through the action's hard link.
            chmod(first + "/a.txt", 0o644)
            try Data("ALPHA\n".utf8).write(to: URL(fileURLWithPath: first + "/a.txt"))

            fixture.store.resetCounts()
            let second = try fixture.newDirectory()
            let summary = try await stager.stage(root: root, into: second)
            try Self.checkStaged(second)
            #expect(summary.fetchedBlobs == 1)
            #expect(fixture.store.readCount(Digest.of(Data("alpha\n".utf8))) == 1)
        }
    }

    @Test("large files are streamed through ByteStream and verified; the cache keeps them by digest")
    func largeFilesStream() async throws {
        try await withWorkerFixture(maxBatchTotalSizeBytes: 64 << 10) { fixture in
            let tree = try fixture.newDirectory("big")
            var bytes = Data(count: 1 << 20)
            for index in stride(from: 0, to: bytes.count, by: 997) { bytes[index] = UInt8(truncatingIfNeeded: index) }
            try bytes.write(to: URL(fileURLWithPath: tree + "/big.bin"))
            let root = try await fixture.upload(tree)
            let stager = InputStager(store: fixture.remote, cache: fixture.cache)
            let first = try fixture.newDirectory()
            _ = try await stager.stage(root: root, into: first)
            #expect(FileManager.default.contents(atPath: first + "/big.bin") == bytes)
            fixture.store.resetCounts()
            _ = try await stager.stage(root: root, into: try fixture.newDirectory())
            #expect(fixture.store.totalReads == 0)
        }
    }

    @Test("input blobs the CAS lacks: FAILED_PRECONDITION with one MISSING violation per blob")
    func missingInputs() async throws {
        try await withWorkerFixture { fixture in
            let absent = Digest.of(Data("never uploaded".utf8))
            let directory = Build_Bazel_Remote_Execution_V2_Directory.with {
                $0.files = [.with {
                    $0.name = "x"
                    $0.digest = absent.proto
                }]
            }
            let root = try await fixture.put(directory)
            let stager = InputStager(store: fixture.remote, cache: fixture.cache)
            let error = await #expect(throws: MissingInputs.self) { try await stager.stage(root: root, into: try fixture.newDirectory()) }
            let status = try #require(error).status
            #expect(status.code == 9)
            let failure = try Google_Rpc_PreconditionFailure(unpackingAny: try #require(status.details.first))
            #expect(failure.violations.map(\.subject) == ["blobs/\(absent.hash)/\(absent.sizeBytes)"])
            #expect(failure.violations.map(\.type) == ["MISSING"])
        }
    }

    @Test("the cache stays within its size, least recently used first, and reopens with its intact entries")
    func cacheBound() throws {
        let directory = FileManager.default.temporaryDirectory.path + "/strata-cache-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = try InputCache(directory: directory, maxBytes: 250)
        let blobs = (0..<4).map { Data(repeating: UInt8($0), count: 100) }
        for blob in blobs { try cache.insert(verifiedData: blob, digest: Digest.of(blob), executable: false) }
        #expect(cache.totalBytes <= 250)
        #expect(!cache.link(Digest.of(blobs[0]), executable: false, to: directory + "/x0"))
        #expect(cache.link(Digest.of(blobs[3]), executable: false, to: directory + "/x3"))
        let reopened = try InputCache(directory: directory, maxBytes: 250)
        #expect(reopened.count == cache.count)
    }
}
