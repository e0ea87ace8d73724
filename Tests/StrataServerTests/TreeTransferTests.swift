import Foundation
import StrataAPI
import StrataCore
@testable import StrataRemote
import StrataServer
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// `strata cas upload` / `download`'s core against an in-process server: trees built as REAPI
/// clients build them, and restored byte for byte with their modes, symlinks and empty entries.
@Suite struct TreeTransferTests {
    /// Runs `body` with a remote store on a fresh server whose batch limit is `maxBatch`.
    func withRemote(
        maxBatch: Int64 = 1 << 20, backing: any BlobStore = LRUBlobStore(capacityBytes: 256 << 20),
        _ body: @Sendable (RemoteBlobStore, any BlobStore) async throws -> Void
    ) async throws {
        let instance = Instance(name: "", cas: .init(store: backing, readOnly: false), byteStream: .init(store: backing, readOnly: false))
        try await withServer([instance], maxBatchTotalSizeBytes: maxBatch) { clients in
            let remote = try RemoteBlobStore(url: "grpc://127.0.0.1:\(clients.port)")
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await remote.channel.run() }
                defer { remote.channel.shutdown() }
                try await body(remote, backing)
            }
        }
    }

    /// A tree with everything a build output has: nested directories, an executable, symlinks (to a
    /// file, a directory, outside), an empty file, an empty directory, a file larger than a batch.
    static func makeTree(in root: String) throws {
        let files = FileManager.default
        try files.createDirectory(atPath: root + "/src/lib/deep", withIntermediateDirectories: true)
        try files.createDirectory(atPath: root + "/empty-dir", withIntermediateDirectories: true)
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: root + "/README"))
        try Data("#!/bin/sh\necho hi\n".utf8).write(to: URL(fileURLWithPath: root + "/run.sh"))
        chmod(root + "/run.sh", 0o755)
        try Data().write(to: URL(fileURLWithPath: root + "/src/empty"))
        try Data("same\n".utf8).write(to: URL(fileURLWithPath: root + "/src/lib/a"))
        try Data("same\n".utf8).write(to: URL(fileURLWithPath: root + "/src/lib/deep/b"))  // one blob, two files
        try Blob.random(size: 3 << 20).data.write(to: URL(fileURLWithPath: root + "/src/large.bin"))
        try files.createSymbolicLink(atPath: root + "/link-to-readme", withDestinationPath: "README")
        try files.createSymbolicLink(atPath: root + "/src/link-to-dir", withDestinationPath: "lib/deep")
        try files.createSymbolicLink(atPath: root + "/dangling", withDestinationPath: "../nowhere")
    }

    /// Every entry under `root`: its kind, mode, content or link target, by relative path.
    static func listing(_ root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        func visit(_ relative: String) throws {
            let path = relative.isEmpty ? root : root + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0 else { throw StrataError.notFound(path) }
            let mode = String(info.st_mode & 0o777, radix: 8)
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                result[relative] = "dir \(mode)"
                for name in try FileManager.default.contentsOfDirectory(atPath: path) {
                    try visit(relative.isEmpty ? name : relative + "/" + name)
                }
            case S_IFLNK:
                result[relative] = "link " + (try FileManager.default.destinationOfSymbolicLink(atPath: path))
            default:
                let data = try Data(contentsOf: URL(fileURLWithPath: path))
                result[relative] = "file \(mode) \(Digest.of(data))"
            }
        }
        try visit("")
        return result
    }

    @Test func treeRoundTripsIdentically() async throws {
        let folder = try ClientTestFolder()
        let source = folder.path + "/source"
        try Self.makeTree(in: source)
        let tree = try LocalTree.scan(source)
        #expect(tree.isDirectory)
        try await withRemote { remote, backing in
            let first = try await TreeTransfer.upload(tree, to: remote)
            // Every blob but the empty file's, which a server always holds.
            #expect(first.uploadedBlobs == tree.blobs.count - 1 && first.presentBlobs == 1)
            // The large file went through ByteStream (more than half the 1 MiB batch limit), the rest in batches.
            #expect(try await backing.findMissing(Array(tree.blobs.keys)).isEmpty)
            let second = try await TreeTransfer.upload(tree, to: remote)
            #expect(second.uploadedBlobs == 0 && second.presentBlobs == tree.blobs.count)

            let restored = folder.path + "/restored"
            #expect(try await TreeTransfer.download(tree.root, to: restored, from: remote))  // recognised as a tree
            #expect(try Self.listing(restored) == Self.listing(source))
            // Scanning the copy gives the same root: the same Directory messages.
            #expect(try LocalTree.scan(restored).root == tree.root)
            // An existing destination is refused, not merged into.
            await #expect(throws: StrataError.self) { try await TreeTransfer.download(tree.root, to: restored, from: remote) }
        }
    }

    /// `strata cas --digest-function`: a tree hashed with another function uploads (each call naming
    /// it, its large file through ByteStream with the function's segment), downloads identically,
    /// and its blobs are that function's in the server's storage.
    @Test(arguments: [DigestFunction.blake3, .sha512, .sha1])
    func treeRoundTripsWithAnotherFunction(_ function: DigestFunction) async throws {
        let folder = try ClientTestFolder()
        let source = folder.path + "/source"
        try Self.makeTree(in: source)
        let tree = try LocalTree.scan(source, function: function)
        #expect(tree.root.function == function && tree.blobs.keys.allSatisfy { $0.function == function })
        #expect(tree.root != (try LocalTree.scan(source)).root)
        try await withRemote { remote, backing in
            _ = try await TreeTransfer.upload(tree, to: remote)
            #expect(try await backing.findMissing(Array(tree.blobs.keys)).isEmpty)
            let restored = folder.path + "/restored"
            #expect(try await TreeTransfer.download(tree.root, to: restored, from: remote))
            #expect(try Self.listing(restored) == Self.listing(source))
            #expect(try LocalTree.scan(restored, function: function).root == tree.root)
        }
        #expect(try ClientCommandInput.digest("\(tree.root.hash)/\(tree.root.sizeBytes)", function: function) == tree.root)
    }

    /// A server handing out bytes that do not match the digest (a damaged store, a broken proxy) gets
    /// DATA_LOSS, and nothing of that blob is left on disk: neither a small file fetched in a batch nor
    /// a large one streamed to its file first.
    @Test func bytesThatDoNotMatchTheirDigestAreNotKept() async throws {
        let folder = try ClientTestFolder()
        let source = folder.path + "/source"
        try Self.makeTree(in: source)
        let tree = try LocalTree.scan(source)
        let small = Blob(Data("hello\n".utf8)).digest
        let large = try #require(tree.blobs.keys.first { $0.sizeBytes == 3 << 20 })
        let damaging = DamagingStore()
        try await withRemote(backing: damaging) { remote, _ in
            _ = try await TreeTransfer.upload(tree, to: remote)
            // The server's copy of the large file is damaged (a byte flipped).
            damaging.damage(large)
            let refused = await #expect(throws: StrataError.self) {
                try await TreeTransfer.download(large, to: folder.path + "/large", kind: .file, from: remote)
            }
            #expect(refused?.code == .dataLoss && refused?.message.contains("does not match its digest") == true, "\(String(describing: refused))")
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/large"))
            // The README's copy is damaged: the tree download fails before writing that file.
            damaging.damage(small)
            let treeRefused = await #expect(throws: StrataError.self) {
                try await TreeTransfer.download(tree.root, to: folder.path + "/restored", from: remote)
            }
            #expect(treeRefused?.code == .dataLoss, "\(String(describing: treeRefused))")
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/restored/README"))
        }
    }

    @Test func directoryMessagesAreBuiltAsClientsBuildThem() throws {
        let folder = try ClientTestFolder()
        let root = folder.path
        try Data("x".utf8).write(to: URL(fileURLWithPath: root + "/b"))
        try Data().write(to: URL(fileURLWithPath: root + "/a"))
        chmod(root + "/b", 0o755)
        try FileManager.default.createDirectory(atPath: root + "/d", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: root + "/c", withDestinationPath: "b")
        let tree = try LocalTree.scan(root)
        let empty = Build_Bazel_Remote_Execution_V2_Directory()
        let emptyData = try empty.serializedData()
        let expected = Build_Bazel_Remote_Execution_V2_Directory.with {
            $0.files = [
                .with { $0.name = "a"; $0.digest = Digest.emptySHA256.proto },
                .with { $0.name = "b"; $0.digest = Digest.of(Data("x".utf8)).proto; $0.isExecutable = true },
            ]
            $0.directories = [.with { $0.name = "d"; $0.digest = Digest.of(emptyData).proto }]
            $0.symlinks = [.with { $0.name = "c"; $0.target = "b" }]
        }
        let expectedData = try expected.serializedData()
        #expect(tree.root == Digest.of(expectedData))
        #expect(tree.blobs[tree.root] == .message(expectedData))
        #expect(TreeTransfer.directoryMessage(expectedData) == expected)
        // A file's bytes are not taken for a Directory.
        #expect(TreeTransfer.directoryMessage(Data("hello\n".utf8)) == nil)
        #expect(TreeTransfer.directoryMessage(Data([0x0A, 0x03, 0x0A, 0x01, 0x2F])) == nil)  // a file named "/"
    }

    @Test func fileRoundTripsAndLargeFilesStream() async throws {
        let folder = try ClientTestFolder()
        let path = folder.path + "/large"
        let blob = Blob.random(size: 5 << 20)
        try blob.data.write(to: URL(fileURLWithPath: path))
        let tree = try LocalTree.scan(path)
        #expect(!tree.isDirectory && tree.root == blob.digest)
        try await withRemote { remote, _ in
            let progress = TransferProgress(totalBytes: blob.digest.sizeBytes) { _, _ in }
            _ = try await TreeTransfer.upload(tree, to: remote) { _ in progress }
            #expect(progress.doneBytes == blob.digest.sizeBytes)
            #expect(try await !TreeTransfer.download(blob.digest, to: folder.path + "/copy", from: remote))
            #expect(try Data(contentsOf: URL(fileURLWithPath: folder.path + "/copy")) == blob.data)
            // --tree on a file's digest says what is wrong.
            await #expect(throws: StrataError.self) {
                try await TreeTransfer.download(blob.digest, to: folder.path + "/as-tree", kind: .tree, from: remote)
            }
            // An absent blob: NOT_FOUND, and no file left behind.
            let absent = Blob.random(size: 10).digest
            await #expect(throws: StrataError.self) { try await TreeTransfer.download(absent, to: folder.path + "/absent", kind: .file, from: remote) }
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/absent"))
        }
    }

    @Test func directoryEntriesThatLeaveTheDestinationAreRefused() async throws {
        let folder = try ClientTestFolder()
        let hostile = Build_Bazel_Remote_Execution_V2_Directory.with {
            $0.files = [.with { $0.name = "../escape"; $0.digest = Digest.emptySHA256.proto }]
        }
        let data = try hostile.serializedData()
        try await withRemote { remote, _ in
            try await remote.write(Digest.of(data), data: data)
            await #expect(throws: StrataError.self) {
                try await TreeTransfer.download(Digest.of(data), to: folder.path + "/out", kind: .tree, from: remote)
            }
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/escape"))
        }
    }

    @Test func actionResultFilesInJSONOrBinary() throws {
        let result = ClientTestActionResult.with {
            $0.exitCode = 3
            $0.stdoutRaw = Data("out".utf8)
        }
        #expect(try ClientCommandInput.actionResult(Data(result.jsonString().utf8), file: "r.json") == result)
        #expect(try ClientCommandInput.actionResult(result.serializedData(), file: "r.bin") == result)
        #expect(throws: StrataError.self) { try ClientCommandInput.actionResult(Data("{\"exitCode\": \"x\"}".utf8), file: "bad.json") }
        #expect(try ClientCommandInput.digest("\(Digest.emptySHA256.hash)/0") == Digest.emptySHA256)
        #expect(throws: StrataError.self) { try ClientCommandInput.digest("abc") }
    }
}

typealias ClientTestActionResult = Build_Bazel_Remote_Execution_V2_ActionResult

/// An LRU store that hands out its copies of the digests `damage` names with their first byte flipped:
/// what a server with a damaged store (and no read verification) would send.
private final class DamagingStore: BlobStore {
    let base = LRUBlobStore(capacityBytes: 256 << 20)
    private let damaged = Mutex<Set<Digest>>([])

    func damage(_ digest: Digest) { damaged.withLock { _ = $0.insert(digest) } }

    private func flipped(_ data: Data, _ digest: Digest) -> Data {
        guard damaged.withLock({ $0.contains(digest) }), !data.isEmpty else { return data }
        var data = Data(data)
        data[data.startIndex] ^= 0xFF
        return data
    }

    func findMissing(_ digests: [Digest]) async throws -> [Digest] { try await base.findMissing(digests) }
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let data = flipped(try await base.readAll(digest), digest)
        let start = Int(offset), end = limit.map { min(data.count, start + Int($0)) } ?? data.count
        return BlobBody(data: data.subdata(in: start..<end))
    }
    func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        zip(digests, await base.readBatch(digests)).map { digest, result in result.map { flipped($0, digest) } }
    }
    func write(_ digest: Digest, body: BlobBody) async throws { try await base.write(digest, body: body) }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }
}
