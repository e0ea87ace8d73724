import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import StrataStorage
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

typealias DirectoryMessage = Build_Bazel_Remote_Execution_V2_Directory

/// Builds an action's input root on disk: the `Directory` tree read level by level in batches, then
/// each file hard-linked from the `InputCache`, the files the cache lacks fetched first (small ones in
/// BatchReadBlobs calls within the server's batch limit, large ones streamed through ByteStream), every
/// byte checked against its digest before it is kept. Executable bits, symlinks and empty directories
/// as the tree says.
struct InputStager {
    let store: RemoteBlobStore
    let cache: InputCache

    struct Summary: Sendable, Equatable {
        /// Blobs read from the CAS (Directory messages included) and their bytes.
        var fetchedBlobs = 0
        var fetchedBytes: Int64 = 0
        /// Files linked from the cache without a fetch.
        var cachedFiles = 0
    }

    private struct FileToPlace {
        var path: String
        var digest: Digest
        var executable: Bool
    }

    /// Writes the tree of `root` into the existing, empty directory `destination`.
    func stage(root: Digest, into destination: String) async throws -> Summary {
        var summary = Summary()
        let function = root.function
        // The tree, read level by level: one batch call per level (per batch limit), not per directory.
        var directories: [Digest: DirectoryMessage] = [:]
        var level = [root]
        while !level.isEmpty {
            let wanted = Array(Set(level).subtracting(directories.keys))
            // Directory messages are cached like files: a second action of the same tree reads nothing.
            var toFetch: [Digest] = []
            for digest in wanted {
                if let data = cache.read(digest) {
                    directories[digest] = try decodeDirectory(data, digest)
                } else {
                    toFetch.append(digest)
                }
            }
            for (digest, result) in zip(toFetch, await store.readBatch(toFetch)) {
                let data = try fetched(digest, result)
                // An empty message is known without a read.
                if !digest.isEmpty {
                    summary.fetchedBlobs += 1
                    summary.fetchedBytes += digest.sizeBytes
                }
                directories[digest] = try decodeDirectory(data, digest)
                try cache.insert(verifiedData: data, digest: digest, executable: false)
            }
            level = try wanted.flatMap { digest in
                try directories[digest]!.directories.map { node throws(StrataError) in try Digest(node.digest, function: function) }
            }
        }

        // The directories, symlinks and the list of files to place.
        var files: [FileToPlace] = []
        func layOut(_ digest: Digest, at path: String) throws {
            let directory = directories[digest]!
            for node in directory.files {
                try checkName(node.name, in: digest)
                files.append(FileToPlace(path: path + "/" + node.name, digest: try Digest(node.digest, function: function), executable: node.isExecutable))
            }
            for node in directory.symlinks {
                try checkName(node.name, in: digest)
                guard symlink(node.target, path + "/" + node.name) == 0 else {
                    throw StrataError.invalidArgument("input symlink \(path)/\(node.name): \(String(cString: strerror(errno)))")
                }
            }
            for node in directory.directories {
                try checkName(node.name, in: digest)
                let child = path + "/" + node.name
                guard mkdir(child, 0o755) == 0 else {
                    throw StrataError.invalidArgument("input directory \(child): \(String(cString: strerror(errno)))")
                }
                try layOut(try Digest(node.digest, function: function), at: child)
            }
        }
        try layOut(root, at: destination)

        // Linked from the cache when it has them; the others fetched, cached, then linked.
        var missing: [Digest: [FileToPlace]] = [:]
        for file in files {
            if file.digest.isEmpty {
                try createEmpty(file)
            } else if cache.link(file.digest, executable: file.executable, to: file.path) {
                summary.cachedFiles += 1
            } else {
                missing[file.digest, default: []].append(file)
            }
        }
        let limit = await store.batchLimit()
        var batch: [Digest] = []
        var batchBytes: Int64 = 0
        func fetchBatch() async throws {
            guard !batch.isEmpty else { return }
            let results = await store.readBatch(batch)
            let absent = zip(batch, results).compactMap { digest, result in
                if case .failure(let error) = result, error.code == .notFound { digest } else { nil }
            }
            if !absent.isEmpty { throw MissingInputs(absent) }
            for (digest, result) in zip(batch, results) {
                let data = try fetched(digest, result)
                summary.fetchedBlobs += 1
                summary.fetchedBytes += digest.sizeBytes
                for executable in Set(missing[digest]!.map(\.executable)) {
                    try cache.insert(verifiedData: data, digest: digest, executable: executable)
                }
                try place(missing[digest]!, data: data)
            }
            batch = []
            batchBytes = 0
        }
        for digest in missing.keys.sorted() {
            if digest.sizeBytes > limit / 2 {
                try await fetchLarge(digest, for: missing[digest]!)
                summary.fetchedBlobs += 1
                summary.fetchedBytes += digest.sizeBytes
                continue
            }
            if batchBytes + digest.sizeBytes > limit { try await fetchBatch() }
            batch.append(digest)
            batchBytes += digest.sizeBytes
        }
        try await fetchBatch()
        return summary
    }

    /// A blob's bytes from a batch answer, checked against its digest. A blob the CAS lacks is
    /// FAILED_PRECONDITION with the PreconditionFailure the REAPI asks for (the client uploads it again).
    private func fetched(_ digest: Digest, _ result: Result<Data, StrataError>) throws -> Data {
        let data: Data
        switch result {
        case .success(let bytes): data = bytes
        case .failure(let error) where error.code == .notFound: throw MissingInputs([digest])
        case .failure(let error): throw error
        }
        try digest.verify(data)
        return data
    }

    private func decodeDirectory(_ data: Data, _ digest: Digest) throws(StrataError) -> DirectoryMessage {
        do {
            return try DirectoryMessage(serializedBytes: data)
        } catch {
            throw .invalidArgument("input blob \(digest) is not a Directory message: \(error)")
        }
    }

    private func checkName(_ name: String, in directory: Digest) throws(StrataError) {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.contains("\0") else {
            throw .invalidArgument("input Directory \(directory) names an entry \(StrataError.echo(name)), which is not a plain file name")
        }
    }

    private func createEmpty(_ file: FileToPlace) throws(StrataError) {
        let descriptor = open(file.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, file.executable ? 0o555 : 0o444)
        guard descriptor >= 0 else { throw .invalidArgument("input file \(file.path): \(String(cString: strerror(errno)))") }
        close(descriptor)
    }

    /// Links the just-cached blob to its places; when the cache could not keep it (a cache smaller
    /// than the blob, or one shared with a busy action that evicted it), writes it there directly.
    private func place(_ files: [FileToPlace], data: Data) throws(StrataError) {
        for file in files where !cache.link(file.digest, executable: file.executable, to: file.path) {
            guard FileManager.default.createFile(atPath: file.path, contents: data) else {
                throw .internal("input file \(file.path) cannot be written")
            }
            chmod(file.path, file.executable ? 0o555 : 0o444)
        }
    }

    /// Streams a large blob into a temporary file of the cache, hashing it on the way; kept only when
    /// it matches its digest.
    private func fetchLarge(_ digest: Digest, for files: [FileToPlace]) async throws {
        let temporary = cache.temporaryPath()
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw StrataError.internal("\(temporary): \(String(cString: strerror(errno)))") }
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        do {
            var hasher = digest.function.makeHasher()
            do {
                for try await chunk in try await store.read(digest, offset: 0, limit: nil) {
                    hasher.update(chunk)
                    try handle.write(contentsOf: chunk)
                }
            } catch let error as StrataError where error.code == .notFound {
                throw MissingInputs([digest])
            }
            try handle.close()
            let received = hasher.finalizeDigest()
            guard received == digest else {
                throw StrataError(.dataLoss, "input blob \(digest) from the CAS does not match its digest (the bytes received are \(received)); nothing was kept of it")
            }
        } catch {
            try? handle.close()
            unlink(temporary)
            throw error
        }
        let executables = Set(files.map(\.executable))
        for (index, executable) in executables.sorted(by: { !$0 && $1 }).enumerated() {
            // A second mode is a second entry: a copy, since a hard link would share the mode.
            let source: String
            if index == executables.count - 1 {
                source = temporary
            } else {
                source = cache.temporaryPath()
                try FileManager.default.copyItem(atPath: temporary, toPath: source)
            }
            try cache.insert(verifiedFile: source, digest: digest, executable: executable)
        }
        for file in files where !cache.link(file.digest, executable: file.executable, to: file.path) {
            throw StrataError.unavailable("input file \(file.path): the cache dropped \(digest) before it was linked; the lease is retried")
        }
    }
}

/// Input blobs the CAS lacks: the lease fails FAILED_PRECONDITION with a `PreconditionFailure` naming
/// each one (`MISSING`, `blobs/{hash}/{size}`), as the REAPI says.
struct MissingInputs: Error {
    var digests: [Digest]
    init(_ digests: [Digest]) { self.digests = digests }

    var status: Google_Rpc_Status {
        var failure = Google_Rpc_PreconditionFailure()
        failure.violations = digests.map { digest in .with {
            $0.type = "MISSING"
            $0.subject = "blobs/\(digest.hash)/\(digest.sizeBytes)"
        } }
        return .with {
            $0.code = Int32(StrataError.Code.failedPrecondition.rawValue)
            $0.message = "input blobs are not in the CAS: " + digests.map(\.description).joined(separator: ", ")
            if let detail = try? Google_Protobuf_Any(message: failure) { $0.details = [detail] }
        }
    }
}
