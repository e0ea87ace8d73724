import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import StrataServer
import StrataStorage
import StrataWorker
import SwiftProtobuf
import Synchronization

typealias Action = Build_Bazel_Remote_Execution_V2_Action
typealias Command = Build_Bazel_Remote_Execution_V2_Command
typealias ActionResult = Build_Bazel_Remote_Execution_V2_ActionResult
typealias Tree = Build_Bazel_Remote_Execution_V2_Tree

/// A store that counts the blobs read from it: how the tests see what a worker downloaded.
final class CountingBlobStore: BlobStore {
    let base: any BlobStore
    private let reads = Mutex<[Digest: Int]>([:])

    init(_ base: any BlobStore) { self.base = base }

    func readCount(_ digest: Digest) -> Int { reads.withLock { $0[digest] ?? 0 } }
    var totalReads: Int { reads.withLock { $0.values.reduce(0, +) } }
    func resetCounts() { reads.withLock { $0 = [:] } }
    private func count(_ digests: [Digest]) { reads.withLock { for digest in digests { $0[digest, default: 0] += 1 } } }

    func findMissing(_ digests: [Digest]) async throws -> [Digest] { try await base.findMissing(digests) }
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        if offset == 0 { count([digest]) }
        return try await base.read(digest, offset: offset, limit: limit)
    }
    func write(_ digest: Digest, body: BlobBody) async throws { try await base.write(digest, body: body) }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }
    func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        count(digests)
        return await base.readBatch(digests)
    }
    func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] { await base.writeBatch(blobs) }
}

/// A Strata storage server on 127.0.0.1 (CAS, ByteStream, Capabilities) over a counting memory store,
/// and a worker's view of it: the CAS client, a fresh input cache and a scratch directory.
struct WorkerFixture: Sendable {
    let store: CountingBlobStore
    let remote: RemoteBlobStore
    let cache: InputCache
    let scratch: String
    let port: Int

    var context: RunnerContext { RunnerContext(store: remote, cache: cache) }

    /// A new empty directory under the scratch directory.
    func newDirectory(_ name: String = UUID().uuidString) throws -> String {
        let path = scratch + "/" + name
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Uploads a local tree, answers its root digest.
    func upload(_ path: String) async throws -> Digest {
        let tree = try LocalTree.scan(path)
        _ = try await TreeTransfer.upload(tree, to: remote)
        return tree.root
    }

    func put<M: SwiftProtobuf.Message>(_ message: M) async throws -> Digest {
        let data = try message.serializedData()
        let digest = Digest.of(data)
        try await remote.write(digest, body: BlobBody(data: data))
        return digest
    }

    func fetch(_ digest: Build_Bazel_Remote_Execution_V2_Digest) async throws -> Data {
        try await remote.readAll(try Digest(digest, function: .sha256))
    }

    /// An Action of `command` on the input root `root` (an empty one when nil), uploaded.
    func action(_ command: Command, root: Digest? = nil, timeout: Duration? = nil) async throws -> (Action, Digest) {
        let commandDigest = try await put(command)
        var rootDigest = root
        if rootDigest == nil { rootDigest = try await put(Build_Bazel_Remote_Execution_V2_Directory()) }
        let action = Action.with {
            $0.commandDigest = commandDigest.proto
            $0.inputRootDigest = rootDigest!.proto
            if let timeout { $0.timeout = .init(seconds: timeout.components.seconds) }
        }
        return (action, try await put(action))
    }

    func job(_ action: Action, _ digest: Digest, timeout: Duration? = nil) throws -> RunnerJob {
        RunnerJob(actionDigest: digest, action: action, timeout: timeout, directory: try newDirectory())
    }
}

func withWorkerFixture<T: Sendable>(
    maxBatchTotalSizeBytes: Int64 = InstanceRegistry.defaultMaxBatchTotalSizeBytes, cacheBytes: Int64 = 64 << 20,
    _ body: @Sendable (WorkerFixture) async throws -> T
) async throws -> T {
    let store = CountingBlobStore(LRUBlobStore(capacityBytes: 256 << 20))
    let instance = Instance(name: "", cas: .init(store: store), byteStream: .init(store: store))
    let server = try StrataServer(
        registry: InstanceRegistry([instance], maxBatchTotalSizeBytes: maxBatchTotalSizeBytes),
        addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))])
    let scratch = FileManager.default.temporaryDirectory.path + "/strata-worker-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await server.run()
            return nil
        }
        guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
        let channel = try RemoteChannel(url: "grpc://127.0.0.1:\(port)", options: .init())
        let channelTask = Task { try await channel.run() }
        let fixture = WorkerFixture(
            store: store, remote: RemoteBlobStore(channel: channel),
            cache: try InputCache(directory: scratch + "/cache", maxBytes: cacheBytes), scratch: scratch, port: port)
        let result: T
        do {
            result = try await body(fixture)
        } catch {
            channel.shutdown()
            channelTask.cancel()
            server.beginGracefulShutdown()
            throw error
        }
        channel.shutdown()
        channelTask.cancel()
        server.beginGracefulShutdown()
        for try await _ in group {}
        return result
    }
}

func write(_ text: String, to path: String, executable: Bool = false) throws {
    try FileManager.default.createDirectory(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path, withIntermediateDirectories: true)
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    chmod(path, executable ? 0o755 : 0o644)
}

func contents(_ path: String) -> String? {
    FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
}

func shellCommand(_ script: String, outputPaths: [String] = [], environment: [String: String] = [:], workingDirectory: String = "") -> Command {
    .with {
        $0.arguments = ["/bin/sh", "-c", script]
        $0.outputPaths = outputPaths
        $0.environmentVariables = environment.sorted { $0.key < $1.key }.map { variable in .with {
            $0.name = variable.key
            $0.value = variable.value
        } }
        $0.workingDirectory = workingDirectory
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet), waiting up to `seconds` for it.
func processIsGone(_ pid: pid_t, within seconds: Double = 10) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if kill(pid, 0) != 0 && errno == ESRCH { return true }
        if let stat = contents("/proc/\(pid)/stat"), stat.split(separator: " ").dropFirst(2).first == "Z" { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return false
}
