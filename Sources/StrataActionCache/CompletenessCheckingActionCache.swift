import CoreMetrics
import Foundation
import Logging
import StrataAPI
import StrataCore
import StrataStorage
import SwiftProtobuf

/// Hands out a cached ActionResult only if every blob it references is in `cas`: output files,
/// stdout and stderr, and output directories given as a Tree (the Tree blob and every file in it) or
/// as a root Directory (walked by `DirectoryWalker`, which reads no Directory larger than
/// `maxDirectoryBytes`). Bazel trusts a hit completely, so an entry whose outputs were evicted would
/// fail the build; such an entry is answered as absent and dropped, so the action runs again and its
/// new result replaces it.
///
/// Each group of directories costs one batched `findMissing` (and one batched read of the Directory
/// blobs), never a call per blob; through an index, those calls also refresh the blobs' access
/// times, so cleanup keeps what a cache hit points at.
public struct CompletenessCheckingActionCache: ActionCache {
    public let base: any ActionCache
    public let cas: any BlobStore
    private let logger: Logger
    /// `strata_action_cache_incomplete_total`, when monitoring is on.
    private let incompleteDropped: Counter?

    /// The largest Tree blob a check reads into memory; a larger one makes the entry unusable.
    public static let maxTreeBytes: Int64 = 64 << 20

    /// The largest Directory blob a check reads; a root or subdirectory naming a larger one makes the
    /// entry unusable, unread.
    public var maxDirectoryBytes: Int64 = DirectoryWalker.defaultMaxDirectoryBytes

    /// `metrics` counts the results dropped as incomplete, labelled with `name` (the cache's place in
    /// the configuration).
    public init(
        _ base: any ActionCache, cas: any BlobStore, logger: Logger = Logger(label: "strata.action-cache"),
        metrics: (factory: any MetricsFactory, name: String)? = nil
    ) {
        self.base = base
        self.cas = cas
        self.logger = logger
        self.incompleteDropped = metrics.map {
            Counter(label: "strata_action_cache_incomplete_total", dimensions: [("cache", $0.name)], factory: $0.factory)
        }
    }

    public var allowsUpdates: Bool { base.allowsUpdates }

    public func get(_ action: Digest) async throws -> ActionResult? {
        guard let result = try await base.get(action) else { return nil }
        if let problem = try await missingReference(result, function: action.function) {
            logger.info("dropping the cached result of action \(action): \(problem)")
            incompleteDropped?.increment()
            try? await base.remove(action)
            return nil
        }
        return result
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        try await base.update(action, result)
    }

    public func remove(_ action: Digest) async throws {
        try await base.remove(action)
    }

    /// What makes `result` incomplete, or nil when every referenced blob is present. Throws only
    /// when the CAS cannot answer (UNAVAILABLE…): an outage is not a reason to drop an entry.
    func missingReference(_ result: ActionResult, function: DigestFunction) async throws -> String? {
        var level: [Digest] = []
        var trees: [Digest] = []
        var roots: [Digest] = []
        do {
            for file in result.outputFiles { level.append(try Digest(file.digest, function)) }
            if result.hasStdoutDigest { level.append(try Digest(result.stdoutDigest, function)) }
            if result.hasStderrDigest { level.append(try Digest(result.stderrDigest, function)) }
            for directory in result.outputDirectories {
                if directory.hasTreeDigest { trees.append(try Digest(directory.treeDigest, function)) }
                if directory.hasRootDirectoryDigest { roots.append(try Digest(directory.rootDirectoryDigest, function)) }
            }
        } catch {
            return "it references a malformed digest: \(error.message)"
        }
        // Trees and directories are read below, which finds them missing (and, through an index,
        // refreshes their access times) without a lookup of their own.
        if let missing = try await cas.findMissing(level).first {
            return "blob \(missing) is not in the CAS"
        }

        // Tree blobs: every file of every directory in them.
        if !trees.isEmpty {
            var files: [Digest] = []
            for tree in trees {
                guard tree.sizeBytes <= Self.maxTreeBytes else { return "tree \(tree) is larger than \(Self.maxTreeBytes) bytes" }
                let tree = try await readMessage(Build_Bazel_Remote_Execution_V2_Tree.self, tree)
                switch tree {
                case .problem(let problem): return problem
                case .found(let tree):
                    do {
                        for directory in [tree.root] + tree.children {
                            for file in directory.files { files.append(try Digest(file.digest, function)) }
                        }
                    } catch {
                        return "a tree references a malformed digest: \(error.message)"
                    }
                }
            }
            if let missing = try await cas.findMissing(files).first { return "blob \(missing) of an output tree is not in the CAS" }
        }

        // Root directories: walk the Directory blobs breadth first, one batched read (and one
        // findMissing of their files) per group of them.
        let walker = DirectoryWalker(store: cas, function: function, children: .requireAll, maxDirectoryBytes: maxDirectoryBytes)
        do {
            try await walker.walk(roots: roots) { entries in
                var files: [Digest] = []
                for entry in entries {
                    for file in entry.directory.files {
                        do throws(StrataError) {
                            files.append(try Digest(file.digest, function))
                        } catch {
                            throw Incomplete(reason: "directory \(entry.digest) references a malformed digest: \(error.message)")
                        }
                    }
                }
                if let missing = try await cas.findMissing(files).first {
                    throw Incomplete(reason: "blob \(missing) of an output directory is not in the CAS")
                }
            }
        } catch let defect as DirectoryWalker.Defect {
            return defect.description
        } catch let incomplete as Incomplete {
            return incomplete.reason
        }
        return nil
    }

    /// Ends a walk at the first reason the result is incomplete.
    private struct Incomplete: Error {
        let reason: String
    }

    private enum Lookup<Message> {
        case found(Message)
        case problem(String)
    }

    private func readMessage<Message: SwiftProtobuf.Message>(_ type: Message.Type, _ digest: Digest) async throws -> Lookup<Message> {
        let data: Data
        do {
            data = try await cas.readAll(digest)
        } catch let error as StrataError where error.code == .notFound {
            return .problem("blob \(digest) is not in the CAS")
        }
        do {
            return .found(try Message(serializedBytes: data))
        } catch {
            return .problem("blob \(digest) is not a valid \(Message.protoMessageName)")
        }
    }
}

extension Digest {
    init(_ proto: Build_Bazel_Remote_Execution_V2_Digest, _ function: DigestFunction) throws(StrataError) {
        try self.init(hash: proto.hash, sizeBytes: proto.sizeBytes, function: function)
    }
}
