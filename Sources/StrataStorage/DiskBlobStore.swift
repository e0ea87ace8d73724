import Foundation
import NIOPosix
import StrataCore

#if canImport(Glibc)
import Glibc
#endif

/// Blobs as files under `path/cas/{first two hex}/{hash}_{size}`.
///
/// A write streams into a private file under `path/tmp`, is verified while it streams, is flushed
/// (`fsync`), and only then renamed into place: a file under its final name is always complete and
/// correct, and it survives a restart. Leftover temporary files from a crash are removed at start-up.
public final class DiskBlobStore: BlobStore {
    public let root: URL
    private let casDirectory: String
    private let tmpDirectory: String
    private let sync: Bool
    private let threadPool: NIOThreadPool

    /// Bytes gathered before one `write(2)`: Bazel sends 16 KiB messages; a syscall and a thread hop for
    /// each would cost more than the copy.
    static let writeBufferSize = 1 << 20

    public init(path: String, sync: Bool = true, threadPool: NIOThreadPool = .singleton) throws {
        self.root = URL(fileURLWithPath: path, isDirectory: true).standardizedFileURL
        self.casDirectory = root.appendingPathComponent("cas").path
        self.tmpDirectory = root.appendingPathComponent("tmp").path
        self.sync = sync
        self.threadPool = threadPool
        let files = FileManager.default
        do {
            try files.createDirectory(atPath: casDirectory, withIntermediateDirectories: true)
            for byte in 0..<256 {
                let fanOut = casDirectory + "/" + [UInt8(byte)].hexString
                if !files.fileExists(atPath: fanOut) { try files.createDirectory(atPath: fanOut, withIntermediateDirectories: false) }
            }
            if files.fileExists(atPath: tmpDirectory) { try files.removeItem(atPath: tmpDirectory) }
            try files.createDirectory(atPath: tmpDirectory, withIntermediateDirectories: true)
        } catch {
            throw StrataError.internal("cannot prepare disk storage at \(root.path): \(error.localizedDescription)")
        }
    }

    func path(of digest: Digest) -> String {
        "\(casDirectory)/\(digest.hash.prefix(2))/\(digest.hash)_\(digest.sizeBytes)"
    }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        if candidates.isEmpty { return [] }
        return try await threadPool.runIfActive {
            candidates.filter { digest in
                var info = stat()
                return stat(self.path(of: digest), &info) != 0 || Int64(info.st_size) != digest.sizeBytes
            }
        }
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        let path = path(of: digest)
        let file = try await threadPool.runIfActive { () throws -> FileDescriptor in
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                if errno == ENOENT { throw StrataError.notFound("blob \(digest) is not in the CAS") }
                throw posixError("open", path)
            }
            let file = FileDescriptor(fd)
            var info = stat()
            guard fstat(fd, &info) == 0 else { throw posixError("stat", path) }
            guard Int64(info.st_size) == digest.sizeBytes else {
                // Only a damaged disk gets here (we rename complete files only): drop it, report missing.
                unlink(path)
                throw StrataError.notFound("blob \(digest) is not in the CAS (its file had the wrong size and was removed)")
            }
            return file
        }
        let pool = threadPool
        return BlobBody {
            var position = range.lowerBound
            return BlobBody.AsyncIterator {
                guard position < range.upperBound else { return nil }
                let count = Int(min(Int64(BlobBody.defaultChunkSize), range.upperBound - position))
                let at = position
                let chunk = try await pool.runIfActive { try file.read(count: count, at: at, path: path) }
                position += Int64(chunk.count)
                return chunk
            }
        }
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        let finalPath = path(of: digest)
        if digest.isEmpty {
            for try await _ in body.verifying(digest) {}
            return
        }
        let exists = try await threadPool.runIfActive {
            var info = stat()
            return stat(finalPath, &info) == 0 && Int64(info.st_size) == digest.sizeBytes
        }
        if exists { return }

        let tmpPath = "\(tmpDirectory)/\(UUID().uuidString)"
        let file = try await threadPool.runIfActive { () throws -> FileDescriptor in
            let fd = open(tmpPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw posixError("create", tmpPath) }
            return FileDescriptor(fd)
        }
        do {
            var pending = Data()
            pending.reserveCapacity(Self.writeBufferSize)
            for try await chunk in body.verifying(digest) {
                pending.append(chunk)
                if pending.count >= Self.writeBufferSize {
                    let full = pending
                    try await threadPool.runIfActive { try file.writeAll(full, path: tmpPath) }
                    pending.removeAll(keepingCapacity: true)
                }
            }
            let rest = pending
            let sync = self.sync
            let casDirectory = self.casDirectory
            try await threadPool.runIfActive {
                try file.writeAll(rest, path: tmpPath)
                if sync, fsync(file.fd) != 0 { throw posixError("fsync", tmpPath) }
                try file.close(path: tmpPath)
                guard rename(tmpPath, finalPath) == 0 else { throw posixError("rename", finalPath) }
                if sync { syncDirectory("\(casDirectory)/\(digest.hash.prefix(2))") }
            }
        } catch {
            try? await threadPool.runIfActive {
                try? file.close(path: tmpPath)
                unlink(tmpPath)
            }
            throw error
        }
    }

    public func delete(_ digests: [Digest]) async throws {
        let paths = digests.filter { !$0.isEmpty }.map(path(of:))
        try await threadPool.runIfActive {
            for path in paths where unlink(path) != 0 && errno != ENOENT {
                throw posixError("delete", path)
            }
        }
    }
}

/// Owns a file descriptor and closes it when dropped, so an abandoned read stream leaks nothing.
final class FileDescriptor: @unchecked Sendable {
    // Mutated only by the one task that owns the stream, one call at a time.
    private(set) var fd: Int32

    init(_ fd: Int32) { self.fd = fd }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    func read(count: Int, at offset: Int64, path: String) throws -> Data {
        var data = Data(count: count)
        var done = 0
        try data.withUnsafeMutableBytes { buffer in
            while done < count {
                let n = pread(fd, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw posixError("read", path)
                }
                if n == 0 { throw StrataError(.dataLoss, "\(path) ended early: the file changed while being read") }
                done += n
            }
        }
        return data
    }

    func writeAll(_ data: Data, path: String) throws {
        try data.withUnsafeBytes { buffer in
            var done = 0
            while done < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw posixError("write", path)
                }
                done += n
            }
        }
    }

    func close(path: String) throws {
        guard fd >= 0 else { return }
        let result = Glibc.close(fd)
        fd = -1
        if result != 0 { throw posixError("close", path) }
    }
}

func syncDirectory(_ path: String) {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    Glibc.close(fd)
}

/// Maps errno to the code a client should see: a full disk is RESOURCE_EXHAUSTED, the rest INTERNAL.
func posixError(_ operation: String, _ path: String) -> StrataError {
    let code = errno
    let reason = String(cString: strerror(code))
    switch code {
    case ENOSPC, EDQUOT:
        return .resourceExhausted("disk storage is full: \(operation) \(path): \(reason)")
    default:
        return .internal("disk storage: \(operation) \(path): \(reason)")
    }
}
