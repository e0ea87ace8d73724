import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

typealias ActionResult = Build_Bazel_Remote_Execution_V2_ActionResult
typealias Command = Build_Bazel_Remote_Execution_V2_Command

/// Gathers what an action produced into its `ActionResult` and uploads it: the outputs the Command
/// names (v2.1 `output_paths`, else the older `output_files` / `output_directories`), stdout and
/// stderr. Files are hashed and uploaded as streams (`TreeTransfer.upload`: only what the CAS lacks;
/// small files in batches, large ones through ByteStream), so memory stays bounded whatever the sizes.
/// An output the command did not produce is simply absent.
struct OutputCollector {
    let store: RemoteBlobStore
    let function: DigestFunction

    /// Fills `result`'s outputs and stdout/stderr digests from `workingDirectory` (where the Command's
    /// paths are relative to) and the two log files, and uploads them.
    func collect(
        _ command: Command, workingDirectory: String, stdoutPath: String, stderrPath: String, into result: inout ActionResult
    ) async throws {
        var blobs: [Digest: LocalTree.Source] = [:]
        func addFile(_ path: String) throws -> Digest {
            let digest = try LocalTree.hashFile(path, function: function)
            blobs[digest] = blobs[digest] ?? .file(path: path)
            return digest
        }
        func outputFile(_ name: String, _ path: String) throws -> Build_Bazel_Remote_Execution_V2_OutputFile {
            let digest = try addFile(path)
            return .with {
                $0.path = name
                $0.digest = digest.proto
                $0.isExecutable = access(path, X_OK) == 0
            }
        }
        func outputDirectory(_ name: String, _ path: String) throws -> Build_Bazel_Remote_Execution_V2_OutputDirectory {
            let tree = try LocalTree.scan(path, function: function)
            var messages: [Digest: DirectoryMessage] = [:]
            for (digest, source) in tree.blobs {
                // Every Directory is uploaded as well as the Tree: `root_directory_digest` below names
                // the root, and a client may walk it (GetTree) instead of reading the Tree.
                blobs[digest] = blobs[digest] ?? source
                if case .message(let data) = source { messages[digest] = try DirectoryMessage(serializedBytes: data) }
            }
            // The Tree: the root and every directory under it, each once, parents before children.
            var treeMessage = Build_Bazel_Remote_Execution_V2_Tree()
            treeMessage.root = messages[tree.root]!
            var seen: Set<Digest> = [tree.root]
            var queue = [tree.root]
            var next = 0
            while next < queue.count {
                let digest = queue[next]
                next += 1
                for child in messages[digest]!.directories {
                    let childDigest = try Digest(child.digest, function: function)
                    guard seen.insert(childDigest).inserted else { continue }
                    treeMessage.children.append(messages[childDigest]!)
                    queue.append(childDigest)
                }
            }
            let treeData = try treeMessage.serializedData()
            let treeDigest = Digest.of(treeData, function: function)
            blobs[treeDigest] = .message(treeData)
            return .with {
                $0.path = name
                $0.treeDigest = treeDigest.proto
                $0.isTopologicallySorted = true
                // REAPI v2.3: the root's own digest, for clients that fetch the tree by its root.
                $0.rootDirectoryDigest = tree.root.proto
            }
        }
        func outputSymlink(_ name: String, _ path: String) throws -> Build_Bazel_Remote_Execution_V2_OutputSymlink {
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: path)
            return .with {
                $0.path = name
                $0.target = target
            }
        }

        let usesOutputPaths = !command.outputPaths.isEmpty
        let requested: [(name: String, expectsDirectory: Bool?)] = usesOutputPaths
            ? command.outputPaths.map { ($0, nil) }
            : command.outputFiles.map { ($0, false) } + command.outputDirectories.map { ($0, true) }
        for (name, expectsDirectory) in requested {
            try Self.checkOutputPath(name)
            let path = name.isEmpty ? workingDirectory : workingDirectory + "/" + name
            var info = stat()
            guard lstat(path, &info) == 0 else { continue }
            switch info.st_mode & S_IFMT {
            case S_IFREG where expectsDirectory != true:
                result.outputFiles.append(try outputFile(name, path))
            case S_IFDIR where expectsDirectory != false:
                result.outputDirectories.append(try outputDirectory(name, path))
            case S_IFLNK:
                let symlink = try outputSymlink(name, path)
                if usesOutputPaths {
                    result.outputSymlinks.append(symlink)
                } else if expectsDirectory == true {
                    result.outputDirectorySymlinks.append(symlink)
                } else {
                    result.outputFileSymlinks.append(symlink)
                }
            default:
                // Another kind than asked for (a directory where a file was named, a socket): not an output.
                continue
            }
        }
        result.outputFiles.sort { $0.path < $1.path }
        result.outputDirectories.sort { $0.path < $1.path }
        result.outputSymlinks.sort { $0.path < $1.path }

        result.stdoutDigest = try addFile(stdoutPath).proto
        result.stderrDigest = try addFile(stderrPath).proto
        let anyDigest = blobs.keys.first ?? Digest.empty(function)
        _ = try await TreeTransfer.upload(LocalTree(root: anyDigest, isDirectory: false, blobs: blobs), to: store)
    }

    /// An output path stays inside the working directory: relative, without `..`.
    static func checkOutputPath(_ name: String) throws(StrataError) {
        if name.hasPrefix("/") || name.split(separator: "/").contains("..") {
            throw .invalidArgument("output path \(StrataError.echo(name)) is not a relative path inside the working directory")
        }
    }
}
