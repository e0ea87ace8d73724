import Foundation
import NIOCore
import StrataCore

/// Checks every blob of a batch against its digest (size and hash), as `Digest.verify` does one by one,
/// and returns each blob's error, nil for the blobs that verified, in the batch's order.
///
/// A large batch is hashed in parallel, in contiguous parts of about equal bytes, one per core: the
/// calling task hashes the first part where it runs (a connection's event loop thread), the others run
/// on Swift's global pool. A connection's RPCs run on one thread (`EventLoopTaskExecutor`), so a client
/// uploading big batches on one connection otherwise got one core of the server: hashing is most of a
/// large BatchUpdateBlobs's CPU (SHA-256 at ~2 GB/s on one core here). A part is handed over only when
/// it holds at least `minimumBytesPerPart`: a hop to the pool and back costs a thread wake-up or two
/// (tens of µs in this VM), so small batches, the common case, are hashed on the caller's thread as
/// before.
public func verifyBatch(
    _ blobs: [(digest: Digest, data: Data)], parts maximumParts: Int = BatchVerification.cores,
    minimumBytesPerPart: Int = BatchVerification.minimumBytesPerPart
) async -> [StrataError?] {
    let total = blobs.reduce(0) { $0 + $1.data.count }
    let parts = BatchVerification.parts(forBytes: total, blobs: blobs.count, cores: maximumParts, minimumBytesPerPart: minimumBytesPerPart)
    guard parts > 1 else { return verify(blobs, 0..<blobs.count) }
    let ranges = BatchVerification.split(blobs.map(\.data.count), into: parts)
    return await withTaskGroup(of: (Range<Int>, [StrataError?]).self) { group in
        for range in ranges.dropFirst() {
            group.addTask(executorPreference: globalConcurrentExecutor) { (range, verify(blobs, range)) }
        }
        var errors = [StrataError?](repeating: nil, count: blobs.count)
        var done = [(ranges[0], verify(blobs, ranges[0]))]
        for await part in group { done.append(part) }
        for (range, partErrors) in done { errors.replaceSubrange(range, with: partErrors) }
        return errors
    }
}

private func verify(_ blobs: [(digest: Digest, data: Data)], _ range: Range<Int>) -> [StrataError?] {
    blobs[range].map { blob -> StrataError? in
        do throws(StrataError) {
            try blob.digest.verify(blob.data)
            return nil
        } catch {
            return error
        }
    }
}

public enum BatchVerification {
    /// 512 KiB, about 250 µs of SHA-256 on one core here: well above the cost of the hop (a batch of
    /// 100 × 4 KiB, Bazel's usual, stays on the caller's thread).
    public static let minimumBytesPerPart = 512 << 10

    /// The cores this process may use, read once: NIO's `System.coreCount` reads the cgroup's files on
    /// every call (an `open` and a `read` or two each), which cost BatchUpdateBlobs a few percent of its
    /// CPU when every batch asked twice.
    public static let cores = System.coreCount

    /// How many parts a batch of `bytes` in `blobs` blobs is hashed in: 1 (on the caller's thread) below
    /// two parts' worth of bytes or on one core.
    public static func parts(
        forBytes bytes: Int, blobs: Int, cores: Int = BatchVerification.cores, minimumBytesPerPart: Int = minimumBytesPerPart
    ) -> Int {
        max(1, min(cores, blobs, bytes / max(1, minimumBytesPerPart)))
    }

    /// Contiguous ranges of `sizes`' indices, `parts` of them (fewer when there are fewer elements),
    /// each ending once it reaches its share of the bytes.
    static func split(_ sizes: [Int], into requested: Int) -> [Range<Int>] {
        let parts = max(1, min(requested, sizes.count))
        let total = sizes.reduce(0, +)
        var ranges: [Range<Int>] = []
        var start = 0
        var bytes = 0
        for (index, size) in sizes.enumerated() {
            bytes += size
            let open = ranges.count + 1
            let partsAfter = parts - open
            guard partsAfter > 0 else { break }
            let elementsAfter = sizes.count - index - 1
            // Close the part at its share of the bytes, or when each part still to come needs one of the
            // elements left.
            if elementsAfter == partsAfter || (elementsAfter > partsAfter && bytes * parts >= total * open) {
                ranges.append(start..<index + 1)
                start = index + 1
            }
        }
        if start < sizes.count || ranges.isEmpty { ranges.append(start..<sizes.count) }
        return ranges
    }
}
