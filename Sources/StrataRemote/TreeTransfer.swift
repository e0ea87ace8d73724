import Foundation
import StrataAPI
import StrataCore
import SwiftProtobuf
import Synchronization

/// Bytes moved so far of a transfer whose total is known, for a progress display.
public final class TransferProgress: Sendable {
    public let totalBytes: Int64
    private let done = Atomic<Int64>(0)
    private let onChange: @Sendable (Int64, Int64) -> Void

    public init(totalBytes: Int64, onChange: @escaping @Sendable (_ done: Int64, _ total: Int64) -> Void) {
        self.totalBytes = totalBytes
        self.onChange = onChange
    }

    public var doneBytes: Int64 { done.load(ordering: .relaxed) }

    func add(_ bytes: Int64) {
        let now = done.add(bytes, ordering: .relaxed).newValue
        onChange(now, totalBytes)
    }
}

/// What `strata cas upload` and `strata cas download` do, on a `RemoteBlobStore`: FindMissingBlobs,
/// then the missing blobs in batches within the peer's batch limit (small ones) or streamed through
/// ByteStream (large ones); downloads stream each file to disk. Memory stays bounded by a batch and
/// a few chunks, whatever the sizes.
public enum TreeTransfer {
    public struct UploadSummary: Sendable, Equatable {
        /// Blobs the remote lacked and that were sent, and their bytes.
        public var uploadedBlobs = 0
        public var uploadedBytes: Int64 = 0
        /// Blobs the remote already held.
        public var presentBlobs = 0
    }

    /// Uploads what of `tree` the remote lacks. `progress` counts the bytes of the missing blobs.
    public static func upload(
        _ tree: LocalTree, to store: RemoteBlobStore,
        progress makeProgress: (_ totalBytes: Int64) -> TransferProgress? = { _ in nil }
    ) async throws -> UploadSummary {
        let missing = try await store.findMissing(Array(tree.blobs.keys)).sorted()
        var summary = UploadSummary()
        summary.presentBlobs = tree.blobs.count - missing.count
        summary.uploadedBlobs = missing.count
        summary.uploadedBytes = missing.reduce(0) { $0 + $1.sizeBytes }
        let progress = makeProgress(summary.uploadedBytes)
        let limit = await store.batchLimit()
        var batch: [(digest: Digest, data: Data)] = []
        var batchBytes: Int64 = 0
        func sendBatch() async throws {
            guard !batch.isEmpty else { return }
            for (blob, result) in zip(batch, await store.writeBatch(batch)) {
                if case .failure(let error) = result { throw StrataError(error.code, "uploading \(blob.digest): \(error.message)") }
            }
            progress?.add(batchBytes)
            batch = []
            batchBytes = 0
        }
        for digest in missing {
            guard let source = tree.blobs[digest] else { continue }
            if digest.sizeBytes <= limit / 2 {
                if batchBytes + digest.sizeBytes > limit { try await sendBatch() }
                batch.append((digest, try read(source, digest)))
                batchBytes += digest.sizeBytes
            } else {
                let body: BlobBody = switch source {
                case .file(let path): LocalTree.fileBody(path)
                case .message(let data): BlobBody(data: data)
                }
                try await store.write(digest, body: counted(body, progress))
            }
        }
        try await sendBatch()
        return summary
    }

    private static func read(_ source: LocalTree.Source, _ digest: Digest) throws(StrataError) -> Data {
        switch source {
        case .message(let data): return data
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else { throw .invalidArgument("\(path) cannot be read") }
            // The file changed since it was hashed: its digest would name other bytes.
            guard Digest.of(data, function: digest.function) == digest else { throw .failedPrecondition("\(path) changed while it was being uploaded") }
            return data
        }
    }

    private static func counted(_ body: BlobBody, _ progress: TransferProgress?) -> BlobBody {
        guard let progress else { return body }
        return BlobBody {
            var iterator = body.makeAsyncIterator()
            return BlobBody.AsyncIterator {
                let chunk = try await iterator.next()
                if let chunk { progress.add(Int64(chunk.count)) }
                return chunk
            }
        }
    }

    // MARK: Download

    /// Whether `data` is a `Directory` message as clients write them: it decodes, encodes back to the
    /// same bytes, and names its entries with plain, sorted names. A file's bytes practically never are.
    public static func directoryMessage(_ data: Data) -> Build_Bazel_Remote_Execution_V2_Directory? {
        guard !data.isEmpty, let directory = try? Build_Bazel_Remote_Execution_V2_Directory(serializedBytes: data),
              (try? directory.serializedData()) == data else { return nil }
        let names = [directory.files.map(\.name), directory.directories.map(\.name), directory.symlinks.map(\.name)]
        for list in names {
            guard list.allSatisfy(isPlainName), zip(list, list.dropFirst()).allSatisfy({ $0.utf8.lexicographicallyPrecedes($1.utf8) })
            else { return nil }
        }
        return directory
    }

    /// A name that stays inside the directory it is created in.
    static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\0")
    }

    /// A Directory message is small; larger blobs are taken as files without being read first.
    static let directoryProbeLimit: Int64 = 4 << 20

    public enum Kind: Sendable { case file, tree, automatic }

    /// Downloads `digest` to `destination`, which must not exist (an empty directory is allowed for a
    /// tree): a file, or a tree restored with executable bits, symlinks, empty files and directories.
    /// `automatic` takes the blob as a tree when it is a `Directory` message. Returns whether a tree
    /// was written.
    @discardableResult
    public static func download(
        _ digest: Digest, to destination: String, kind: Kind = .automatic, from store: RemoteBlobStore,
        progress: TransferProgress? = nil
    ) async throws -> Bool {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: destination, isDirectory: &isDirectory) {
            let empty = isDirectory.boolValue && ((try? FileManager.default.contentsOfDirectory(atPath: destination))?.isEmpty ?? false)
            guard kind != .file && empty else { throw StrataError.failedPrecondition("\(destination) already exists") }
        }
        switch kind {
        case .file:
            try await downloadFile(digest, to: destination, executable: false, from: store, progress: progress)
            return false
        case .tree:
            try await downloadTree(
                try await readDirectory(digest, from: store), function: digest.function, to: destination, from: store, progress: progress)
            return true
        case .automatic:
            if digest.sizeBytes > 0 && digest.sizeBytes <= directoryProbeLimit {
                let data = try await readVerified(digest, from: store)
                if let directory = directoryMessage(data) {
                    try await downloadTree(directory, function: digest.function, to: destination, from: store, progress: progress)
                    return true
                }
                try write(data, to: destination, executable: false)
                progress?.add(Int64(data.count))
                return false
            }
            try await downloadFile(digest, to: destination, executable: false, from: store, progress: progress)
            return false
        }
    }

    static func readDirectory(_ digest: Digest, from store: RemoteBlobStore) async throws -> Build_Bazel_Remote_Execution_V2_Directory {
        let data = try await readVerified(digest, from: store)
        do {
            let directory = try Build_Bazel_Remote_Execution_V2_Directory(serializedBytes: data)
            for name in directory.files.map(\.name) + directory.directories.map(\.name) + directory.symlinks.map(\.name)
            where !isPlainName(name) {
                throw StrataError.invalidArgument("Directory \(digest) names an entry \(StrataError.echo(name)), which is not a plain file name")
            }
            return directory
        } catch let error as StrataError {
            throw error
        } catch {
            throw StrataError.invalidArgument("blob \(digest) is not a Directory message: \(error)")
        }
    }

    private static func downloadTree(
        _ directory: Build_Bazel_Remote_Execution_V2_Directory, function: DigestFunction, to path: String,
        from store: RemoteBlobStore, progress: TransferProgress?
    ) async throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw StrataError.failedPrecondition("\(path): cannot create the directory: \(error.localizedDescription)")
        }
        // Small files in BatchReadBlobs calls within the peer's batch limit (one round trip for many),
        // large ones streamed one by one.
        let limit = await store.batchLimit()
        var batch: [(digest: Digest, path: String, executable: Bool)] = []
        var batchBytes: Int64 = 0
        func fetchBatch() async throws {
            guard !batch.isEmpty else { return }
            var unique: [Digest] = []
            for file in batch where !unique.contains(file.digest) { unique.append(file.digest) }
            var received: [Digest: Data] = [:]
            for (digest, result) in zip(unique, await store.readBatch(unique)) {
                let data = try result.get()
                try verify(data, digest)
                received[digest] = data
            }
            for file in batch {
                try write(received[file.digest]!, to: file.path, executable: file.executable)
                progress?.add(file.digest.sizeBytes)
            }
            batch = []
            batchBytes = 0
        }
        for file in directory.files {
            // A tree's digests are all of its root's function.
            let digest = try Digest(hash: file.digest.hash, sizeBytes: file.digest.sizeBytes, function: function)
            let filePath = path + "/" + file.name
            guard digest.sizeBytes <= limit / 4 else {
                try await downloadFile(digest, to: filePath, executable: file.isExecutable, from: store, progress: progress)
                continue
            }
            if batchBytes + digest.sizeBytes > limit { try await fetchBatch() }
            batch.append((digest, filePath, file.isExecutable))
            batchBytes += digest.sizeBytes
        }
        try await fetchBatch()
        for link in directory.symlinks {
            do {
                try FileManager.default.createSymbolicLink(atPath: path + "/" + link.name, withDestinationPath: link.target)
            } catch {
                throw StrataError.failedPrecondition("\(path)/\(link.name): cannot create the symlink: \(error.localizedDescription)")
            }
        }
        for child in directory.directories {
            let digest = try Digest(hash: child.digest.hash, sizeBytes: child.digest.sizeBytes, function: function)
            try await downloadTree(
                try await readDirectory(digest, from: store), function: function, to: path + "/" + child.name, from: store,
                progress: progress)
        }
    }

    /// Streams a blob into a new file: `rwxr-xr-x` when executable, else `rw-r--r--` (as bgd writes them).
    private static func downloadFile(
        _ digest: Digest, to path: String, executable: Bool, from store: RemoteBlobStore, progress: TransferProgress?
    ) async throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, executable ? 0o755 : 0o644)
        guard descriptor >= 0 else {
            throw StrataError.failedPrecondition("\(path): cannot create the file: \(String(cString: strerror(errno)))")
        }
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        do {
            var hasher = digest.function.makeHasher()
            for try await chunk in try await store.read(digest, offset: 0, limit: nil) {
                hasher.update(chunk)
                try handle.write(contentsOf: chunk)
                progress?.add(Int64(chunk.count))
            }
            try handle.close()
            if let problem = mismatch(digest, hasher) { throw received(digest, problem) }
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(atPath: path)
            throw error
        }
        // The mode asked for, whatever the umask.
        chmod(path, executable ? 0o755 : 0o644)
    }

    /// A whole blob, checked against its digest.
    private static func readVerified(_ digest: Digest, from store: RemoteBlobStore) async throws -> Data {
        let data = try await store.readAll(digest)
        try verify(data, digest)
        return data
    }

    /// Nothing the server sends is written or parsed unless it hashes to the digest asked for.
    private static func verify(_ data: Data, _ digest: Digest) throws(StrataError) {
        var hasher = digest.function.makeHasher()
        hasher.update(data)
        if let problem = mismatch(digest, hasher) { throw received(digest, problem) }
    }

    private static func mismatch(_ digest: Digest, _ hasher: BlobHasher) -> String? {
        guard hasher.byteCount == digest.sizeBytes else { return "\(hasher.byteCount) bytes received" }
        let actual = hasher.finalizeDigest()
        return actual == digest ? nil : "the bytes received hash to \(actual.hash)"
    }

    private static func received(_ digest: Digest, _ problem: String) -> StrataError {
        StrataError(.dataLoss, "blob \(digest) from the server does not match its digest (\(problem)); nothing was kept of it")
    }

    private static func write(_ data: Data, to path: String, executable: Bool) throws {
        guard FileManager.default.createFile(atPath: path, contents: data) else {
            throw StrataError.failedPrecondition("\(path): cannot create the file")
        }
        chmod(path, executable ? 0o755 : 0o644)
    }
}
