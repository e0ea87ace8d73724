import Foundation
import StrataAPI
import StrataActionCache
import StrataCore
import Synchronization

/// The size of each recently seen blob, by hash: what `GET /cas/{hash}` of Bazel's HTTP cache
/// protocol needs, since its path names a blob by hash alone while every Strata storage keys blobs by
/// hash *and* size (bazel-remote keys its disk cache by hash and keeps the size in its LRU index).
///
/// It learns sizes from every way a blob becomes known to this server: a blob written or found
/// through the instance's CAS (`SizeRecordingBlobStore`, gRPC and HTTP alike), and the outputs an
/// action result names whenever one is stored or handed out (`HashKeyedActionCache`), which is how
/// Bazel finds its blobs: `GET /ac/{hash}` first, then `GET /cas/{hash}` of what it lists. So after
/// a restart a blob of a cached action is found again through its action. A hash it does not know is
/// answered 404, as a cache miss: never a wrong byte, since the storage verifies hash and size.
///
/// Bounded: the least recently used hashes are forgotten past `capacity` entries (roughly 150 bytes each).
public final class BlobSizeIndex: Sendable {
    private let sizes: Mutex<LRUDictionary<DigestKey, Int64>>
    public let capacity: Int

    public static let defaultCapacity = 1_000_000

    public init(capacity: Int = BlobSizeIndex.defaultCapacity) {
        self.capacity = capacity
        self.sizes = Mutex(LRUDictionary(capacity: Int64(capacity)))
    }

    /// The hash alone, as a key: the digest with size 0.
    private static func key(_ digest: Digest) -> DigestKey? {
        // Hashes longer than 256 bits are not keyed by DigestKey alone; Bazel's HTTP cache sends SHA-256.
        guard digest.function.hexLength <= DigestKey.hexCapacity else { return nil }
        return (try? Digest(hash: digest.hash, sizeBytes: 0, function: digest.function))?.key
    }

    public func record(_ digest: Digest) {
        guard let key = Self.key(digest) else { return }
        sizes.withLock { _ = $0.insert(key, digest.sizeBytes, cost: 1) }
    }

    public func record(_ digests: some Sequence<Digest>) {
        let keyed = digests.compactMap { digest in Self.key(digest).map { ($0, digest.sizeBytes) } }
        guard !keyed.isEmpty else { return }
        sizes.withLock { sizes in
            for (key, size) in keyed { _ = sizes.insert(key, size, cost: 1) }
        }
    }

    /// The digest of `hash` with its recorded size, nil when the size is not known.
    public func digest(hash: String, function: DigestFunction = .sha256) -> Digest? {
        guard let probe = try? Digest(hash: hash, sizeBytes: 0, function: function) else { return nil }
        if probe == Digest.empty(function) { return probe }
        guard let size = sizes.withLock({ $0.get(probe.key) }) else { return nil }
        return try? Digest(hash: hash, sizeBytes: size, function: function)
    }

    /// Whether `hash` has a recorded size.
    public func knows(_ digest: Digest) -> Bool {
        guard let key = Self.key(digest) else { return false }
        return sizes.withLock { $0.contains(key) }
    }

    /// Every blob digest `result` names directly: output files, stdout and stderr, output directories'
    /// Tree blobs (the files inside a Tree are recorded when the Tree is read: `recordTree`).
    public static func digests(of result: ActionResult, function: DigestFunction) -> [Digest] {
        var protos = result.outputFiles.map(\.digest)
        protos += result.outputDirectories.map(\.treeDigest)
        if result.hasStdoutDigest { protos.append(result.stdoutDigest) }
        if result.hasStderrDigest { protos.append(result.stderrDigest) }
        return protos.compactMap { try? Digest(hash: $0.hash, sizeBytes: $0.sizeBytes, function: function) }
    }

    /// Records the files and directories of a Tree blob's bytes (invalid bytes record nothing).
    public func recordTree(_ bytes: Data, function: DigestFunction) {
        guard let tree = try? Build_Bazel_Remote_Execution_V2_Tree(serializedBytes: bytes) else { return }
        var digests: [Digest] = []
        for directory in [tree.root] + tree.children {
            for file in directory.files {
                if let digest = try? Digest(hash: file.digest.hash, sizeBytes: file.digest.sizeBytes, function: function) {
                    digests.append(digest)
                }
            }
        }
        record(digests)
    }
}
