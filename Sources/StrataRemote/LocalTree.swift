import Foundation
import StrataAPI
import StrataCore

typealias DirectoryMessage = Build_Bazel_Remote_Execution_V2_Directory

/// A local file or directory tree as REAPI clients (Bazel, BuildGrid's `bgd cas upload-dir`) put it in
/// a CAS: each directory a `Directory` message with its files, subdirectories and symlinks sorted by
/// name (UTF-8 byte order), files with `is_executable`, symlinks as `SymlinkNode`s with their target
/// unchanged, empty files and directories kept; other kinds of files (sockets, FIFOs) are skipped.
/// Files are hashed as streams; only the `Directory` messages are held in memory.
public struct LocalTree: Sendable {
    public enum Source: Sendable, Equatable {
        case file(path: String)
        case message(Data)
    }

    /// The file's digest, or the root `Directory` message's.
    public let root: Digest
    public let isDirectory: Bool
    /// Every blob the tree consists of, each once.
    public let blobs: [Digest: Source]

    public var totalBytes: Int64 { blobs.keys.reduce(0) { $0 + $1.sizeBytes } }

    /// Blobs gathered elsewhere (a worker's outputs: files, Tree messages, stdout), for `TreeTransfer.upload`.
    public init(root: Digest, isDirectory: Bool, blobs: [Digest: Source]) {
        self.root = root
        self.isDirectory = isDirectory
        self.blobs = blobs
    }

    /// Hashes the file or tree at `path` with `function` (every digest of a tree is of one function).
    public static func scan(_ path: String, function: DigestFunction = .sha256) throws(StrataError) -> LocalTree {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw .notFound("\(path): \(String(cString: strerror(errno)))") }
        var blobs: [Digest: Source] = [:]
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            let digest = try hashFile(path, function: function)
            blobs[digest] = .file(path: path)
            return LocalTree(root: digest, isDirectory: false, blobs: blobs)
        case S_IFDIR:
            let root = try scanDirectory(path, function: function, into: &blobs)
            return LocalTree(root: root, isDirectory: true, blobs: blobs)
        default:
            throw .invalidArgument("\(path) is neither a regular file nor a directory")
        }
    }

    private static func scanDirectory(
        _ path: String, function: DigestFunction, into blobs: inout [Digest: Source]
    ) throws(StrataError) -> Digest {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: path)
        } catch {
            throw .invalidArgument("\(path): cannot list the directory: \(error.localizedDescription)")
        }
        var directory = DirectoryMessage()
        for name in names.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
            let child = path.hasSuffix("/") ? path + name : path + "/" + name
            var info = stat()
            guard lstat(child, &info) == 0 else { throw .invalidArgument("\(child): \(String(cString: strerror(errno)))") }
            switch info.st_mode & S_IFMT {
            case S_IFREG:
                let digest = try hashFile(child, function: function)
                blobs[digest] = blobs[digest] ?? .file(path: child)
                directory.files.append(.with {
                    $0.name = name
                    $0.digest = digest.proto
                    // As bgd does: executable for this user.
                    $0.isExecutable = access(child, X_OK) == 0
                })
            case S_IFDIR:
                let digest = try scanDirectory(child, function: function, into: &blobs)
                directory.directories.append(.with {
                    $0.name = name
                    $0.digest = digest.proto
                })
            case S_IFLNK:
                let target: String
                do {
                    target = try FileManager.default.destinationOfSymbolicLink(atPath: child)
                } catch {
                    throw .invalidArgument("\(child): cannot read the symlink: \(error.localizedDescription)")
                }
                directory.symlinks.append(.with {
                    $0.name = name
                    $0.target = target
                })
            default:
                continue
            }
        }
        let data: Data
        do {
            data = try directory.serializedData()
        } catch {
            throw .internal("\(path): cannot encode its Directory message: \(error)")
        }
        let digest = Digest.of(data, function: function)
        blobs[digest] = .message(data)
        return digest
    }

    /// The digest of a file under `function`, read in 1 MiB pieces.
    public static func hashFile(_ path: String, function: DigestFunction) throws(StrataError) -> Digest {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .invalidArgument("\(path) cannot be read") }
        defer { try? handle.close() }
        var hasher = function.makeHasher()
        do {
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(chunk) }
        } catch {
            throw .invalidArgument("\(path): \(error.localizedDescription)")
        }
        return hasher.finalizeDigest()
    }

    /// A file's bytes as a body of 1 MiB chunks, read as the consumer asks for them.
    static func fileBody(_ path: String) -> BlobBody {
        BlobBody {
            let handle = FileHandle(forReadingAtPath: path)
            return BlobBody.AsyncIterator {
                guard let handle else { throw StrataError.invalidArgument("\(path) cannot be read") }
                guard let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty else {
                    try? handle.close()
                    return nil
                }
                return chunk
            }
        }
    }
}
