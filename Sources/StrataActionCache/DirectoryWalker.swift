import Foundation
import StrataAPI
import StrataCore
import StrataStorage
import SwiftProtobuf

/// Walks a tree of `Directory` blobs breadth first, for GetTree, the action cache's completeness check
/// and anything else that follows `DirectoryNode`s through a CAS.
///
/// Every size it acts on was written by a client, so it holds these invariants whatever a Directory says:
/// - No read asks for more than `maxDirectoryBytes` for one blob: a digest's `size_bytes` is checked
///   *before* its blob is read, and a larger one is a `Defect.tooLarge` (never read, never allocated).
/// - One batched read holds at most `max(maxBatchBytes, maxDirectoryBytes)` bytes, so a walk's memory is
///   bounded by its largest batch plus the set of digests already seen, however wide or deep the tree.
/// - Byte counts are summed with saturating arithmetic: sizes summing past Int64.max cannot trap.
/// - Each directory is visited once, even when several parents name it; batches come in breadth-first
///   order, the same for every walk of an unchanged tree (GetTree's page tokens count on it).
/// - Errors of the store other than NOT_FOUND (UNAVAILABLE…) are thrown as they are; what is wrong
///   with the tree itself is a `Defect`, which each caller turns into its own answer.
public struct DirectoryWalker: Sendable {
    /// 16 MiB: about 150,000 entries, far more than any directory a build produces, and the most one
    /// walk reads into memory for a single blob.
    public static let defaultMaxDirectoryBytes: Int64 = 16 << 20
    /// 4 MiB, the default batch limit of the CAS.
    public static let defaultMaxBatchBytes: Int64 = 4 << 20

    /// What to do about a subdirectory that is absent or whose digest is malformed.
    public enum Children: Sendable {
        /// Leave it out, as GetTree does for missing subdirectories.
        case skipMissing
        /// Report it as a `Defect`: the tree must be complete.
        case requireAll
    }

    /// Why a tree cannot be walked as asked.
    public enum Defect: Error, Sendable, CustomStringConvertible {
        /// The directory blob is not in the CAS (for `skipMissing`, only the root).
        case missing(Digest)
        /// Its digest claims more bytes than the walker reads for one directory.
        case tooLarge(Digest, limit: Int64)
        /// Its bytes do not decode as a Directory message.
        case notADirectory(Digest)
        /// A DirectoryNode in `parent` has a digest that is not valid for the walk's digest function.
        case malformedChild(parent: Digest, StrataError)

        public var description: String {
            switch self {
            case .missing(let digest): "directory \(digest) is not in the CAS"
            case .tooLarge(let digest, let limit):
                "directory blob \(digest) is larger than the \(limit) bytes allowed for one Directory"
            case .notADirectory(let digest): "blob \(digest) in the tree is not a Directory message"
            case .malformedChild(let parent, let error): "directory \(parent) names a malformed subdirectory: \(error.message)"
            }
        }
    }

    /// One directory read by the walk, with the size of its blob.
    public struct Entry: Sendable {
        public var digest: Digest
        public var directory: Build_Bazel_Remote_Execution_V2_Directory
        public var sizeBytes: Int
    }

    public let store: any BlobStore
    public let function: DigestFunction
    public let children: Children
    public let maxDirectoryBytes: Int64
    public let maxBatchBytes: Int64

    public init(
        store: any BlobStore, function: DigestFunction, children: Children,
        maxDirectoryBytes: Int64 = DirectoryWalker.defaultMaxDirectoryBytes,
        maxBatchBytes: Int64 = DirectoryWalker.defaultMaxBatchBytes
    ) {
        self.store = store
        self.function = function
        self.children = children
        self.maxDirectoryBytes = max(0, maxDirectoryBytes)
        self.maxBatchBytes = max(1, maxBatchBytes)
    }

    /// Calls `visit` with each batch of directories read, in breadth-first order. Throws a `Defect`
    /// for what is wrong with the tree (a missing root always; other missing or malformed children
    /// only with `requireAll`), or the store's error.
    public func walk(roots: [Digest], visit: ([Entry]) async throws -> Void) async throws {
        var seen = Set<Digest>()
        var level = roots.filter { seen.insert($0).inserted }
        var isRootLevel = true
        while !level.isEmpty {
            var next: [Digest] = []
            for batch in try batches(level) {
                let results = await store.readBatch(batch)
                var entries: [Entry] = []
                entries.reserveCapacity(batch.count)
                for (digest, result) in zip(batch, results) {
                    let data: Data
                    switch result {
                    case .success(let bytes): data = bytes
                    case .failure(let error) where error.code == .notFound:
                        if isRootLevel || children == .requireAll { throw Defect.missing(digest) }
                        continue
                    case .failure(let error): throw error
                    }
                    let directory: Build_Bazel_Remote_Execution_V2_Directory
                    do {
                        directory = try Build_Bazel_Remote_Execution_V2_Directory(serializedBytes: data)
                    } catch {
                        throw Defect.notADirectory(digest)
                    }
                    for child in directory.directories {
                        let childDigest: Digest
                        do {
                            childDigest = try Digest(hash: child.digest.hash, sizeBytes: child.digest.sizeBytes, function: function)
                        } catch {
                            // A malformed digest names no blob we could hold: for GetTree, like a missing one.
                            if children == .requireAll { throw Defect.malformedChild(parent: digest, error) }
                            continue
                        }
                        if seen.insert(childDigest).inserted { next.append(childDigest) }
                    }
                    entries.append(Entry(digest: digest, directory: directory, sizeBytes: data.count))
                }
                try await visit(entries)
            }
            isRootLevel = false
            level = next
        }
    }

    /// Groups `digests` into reads of at most `maxBatchBytes` each (one larger directory alone),
    /// refusing any directory over `maxDirectoryBytes` before anything of this level is read.
    private func batches(_ digests: [Digest]) throws(Defect) -> [[Digest]] {
        var batches: [[Digest]] = []
        var current: [Digest] = []
        var bytes: Int64 = 0
        for digest in digests {
            guard digest.sizeBytes <= maxDirectoryBytes else { throw .tooLarge(digest, limit: maxDirectoryBytes) }
            let (sum, overflow) = bytes.addingReportingOverflow(digest.sizeBytes)
            if !current.isEmpty && (overflow || sum > maxBatchBytes) {
                batches.append(current)
                current = []
                bytes = 0
            }
            current.append(digest)
            bytes = overflow ? digest.sizeBytes : sum
        }
        if !current.isEmpty { batches.append(current) }
        return batches
    }
}
