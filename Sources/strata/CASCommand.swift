import ArgumentParser
import Foundation
import StrataCore
import StrataRemote

/// `strata cas upload | download | missing`: a REAPI server's CAS from the command line.
struct CASCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cas", abstract: "Upload, download and look up blobs and trees in a REAPI server's CAS.",
        subcommands: [Upload.self, Download.self, Missing.self])

    struct Upload: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Upload files and directory trees; print each one's root digest (HASH/SIZE), one a line.",
            discussion: """
            A directory becomes Directory messages as REAPI clients build them (sorted names, executable \
            bits, symlinks, empty files and directories kept). Only the blobs the server lacks are sent: \
            small ones in batches, large ones streamed through ByteStream.
            """)

        @OptionGroup var remote: RemoteClientOptions
        @Argument(help: "Files and directories.") var paths: [String]

        func run() async throws {
            try await remote.withChannel { channel in
                let store = RemoteBlobStore(channel: channel)
                for path in paths {
                    let tree = try LocalTree.scan(path, function: try remote.function())
                    let summary = try await TreeTransfer.upload(tree, to: store) { ProgressBar.make(path, totalBytes: $0) }
                    print(tree.root)
                    FileHandle.standardError.write(Data(
                        "\(path): \(summary.uploadedBlobs) blobs uploaded (\(summary.uploadedBytes) bytes), \(summary.presentBlobs) already present\n".utf8))
                }
            }
        }
    }

    struct Download: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Download a blob to a file, or a Directory digest's tree to a directory.",
            discussion: "Without --tree or --file, a blob that is a Directory message is restored as a tree.")

        @OptionGroup var remote: RemoteClientOptions
        @Argument(help: "The digest, HASH/SIZE.") var digest: String
        @Argument(help: "Where to write it; must not exist (an empty directory is allowed for a tree).") var destination: String
        @Flag(help: "The digest is a Directory: restore its tree.") var tree = false
        @Flag(help: "The digest is a file's: write its bytes.") var file = false

        func validate() throws {
            if tree && file { throw ValidationError("--tree and --file exclude each other") }
            _ = try parseDigest(digest, remote)
        }

        func run() async throws {
            let digest = try parseDigest(digest, remote)
            try await remote.withChannel { channel in
                let store = RemoteBlobStore(channel: channel)
                let kind: TreeTransfer.Kind = tree ? .tree : file ? .file : .automatic
                let progress = kind == .tree ? nil : ProgressBar.make(destination, totalBytes: digest.sizeBytes)
                let wroteTree = try await TreeTransfer.download(digest, to: destination, kind: kind, from: store, progress: progress)
                FileHandle.standardError.write(Data("\(destination): \(wroteTree ? "tree" : "file") \(digest) downloaded\n".utf8))
            }
        }
    }

    struct Missing: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the digests the CAS does not hold (FindMissingBlobs), one a line.")

        @OptionGroup var remote: RemoteClientOptions
        @Argument(help: "Digests, HASH/SIZE.") var digests: [String]

        func run() async throws {
            let digests = try digests.map { try parseDigest($0, remote) }
            try await remote.withChannel { channel in
                let missing = Set(try await RemoteBlobStore(channel: channel).findMissing(digests))
                // In the order asked, each once.
                var printed = Set<Digest>()
                for digest in digests where missing.contains(digest) && printed.insert(digest).inserted { print(digest) }
            }
        }
    }
}
