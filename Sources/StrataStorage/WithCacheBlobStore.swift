import CoreMetrics
import Foundation
import Logging
import StrataCore
import Synchronization

/// A fast tier (`cache`) over an authoritative slow one (`fallback`).
///
/// - Reads try the cache; on a miss the blob is copied from the fallback into the cache and served
///   from there (as bb-storage's read caching does), or straight from the fallback when the cache
///   cannot hold it.
/// - `findMissing` asks the fallback: the cache may evict at any time, so only the fallback can
///   promise that a blob stays.
/// - Writes of blobs up to `smallBlobLimit` go to both tiers; larger blobs are streamed to the
///   fallback only and enter the cache when first read, so a write never holds a large blob in memory.
/// - With `deferFallbackWrites`, small writes are acknowledged once in the cache and written to the
///   fallback in the background. Until that completes the blob is served from the pending queue and
///   counted as present, so an acknowledged blob is never reported missing; a failed background write
///   is retried until it succeeds or the server stops (`run()` drains the queue on shutdown). When
///   the queue holds `deferredBytesLimit` bytes, writes go to the fallback synchronously again.
public final class WithCacheBlobStore: BlobStore {
    public let cache: any BlobStore
    public let fallback: any BlobStore
    public let smallBlobLimit: Int64
    private let deferred: DeferredWrites?
    /// Blobs read, and those the fast tier did not have (read from the fallback), since start: the fast
    /// tier's hit ratio, for `/status`.
    private let readCount = Atomic<Int64>(0)
    private let missCount = Atomic<Int64>(0)
    private let readCounter: Counter?
    private let missCounter: Counter?

    public init(
        cache: any BlobStore, fallback: any BlobStore, deferFallbackWrites: Bool = false,
        fallbackWriters: Int = 20, deferredBytesLimit: Int64 = 256 << 20, smallBlobLimit: Int64 = 4 << 20,
        logger: Logger = Logger(label: "strata.with-cache-storage"),
        metrics: (factory: any MetricsFactory, name: String)? = nil
    ) {
        self.readCounter = metrics.map { Counter(label: "strata_with_cache_reads_total", dimensions: [("name", $0.name)], factory: $0.factory) }
        self.missCounter = metrics.map { Counter(label: "strata_with_cache_fast_misses_total", dimensions: [("name", $0.name)], factory: $0.factory) }
        self.cache = cache
        self.fallback = fallback
        self.smallBlobLimit = smallBlobLimit
        self.deferred = deferFallbackWrites
            ? DeferredWrites(fallback: fallback, writers: fallbackWriters, bytesLimit: deferredBytesLimit, logger: logger)
            : nil
    }

    public var maximumBlobSize: Int64? { fallback.maximumBlobSize }

    /// Blobs acknowledged but not yet in the fallback.
    public func pendingFallbackWrites() async -> Int { await deferred?.count ?? 0 }

    /// Waits until every deferred write reached the fallback (or `timeout` passed); the server's
    /// shutdown calls it so acknowledged blobs are not lost.
    public func drain(timeout: Duration = .seconds(30)) async {
        await deferred?.drain(timeout: timeout)
    }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let missing = try await fallback.findMissing(digests)
        guard let deferred, !missing.isEmpty else { return missing }
        let pending = await deferred.pendingDigests(among: missing)
        return missing.filter { !pending.contains($0) }
    }

    /// Blobs read, and those of them the fast tier missed, since start.
    public var fastTierReads: (reads: Int64, misses: Int64) {
        (readCount.load(ordering: .relaxed), missCount.load(ordering: .relaxed))
    }

    private func countReads(_ count: Int, misses missed: Int) {
        readCount.add(Int64(count), ordering: .relaxed)
        readCounter?.increment(by: count)
        guard missed > 0 else { return }
        missCount.add(Int64(missed), ordering: .relaxed)
        missCounter?.increment(by: missed)
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        countReads(1, misses: 0)
        do {
            // A cached copy found corrupt is removed by the cache (NOT_FOUND): when that happens before
            // the first byte went out, the read goes on as a miss, which also repairs the cache.
            return try await cache.read(digest, offset: offset, limit: limit)
                .orElseBeforeFirstChunk { try await self.readMiss(digest, offset: offset, limit: limit) }
        } catch let error as StrataError where error.code == .notFound {}
        return try await readMiss(digest, offset: offset, limit: limit)
    }

    /// A read the cache could not serve: from the pending queue, or from the fallback, copying the blob
    /// into the cache on the way.
    private func readMiss(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        countReads(0, misses: 1)
        if let data = await deferred?.pendingData(digest) {
            let range = try validatedRange(digest, offset: offset, limit: limit)
            let start = data.startIndex + Int(range.lowerBound)
            return BlobBody(data: data[start..<(start + range.count)])
        }
        guard cache.maximumBlobSize.map({ digest.sizeBytes <= $0 }) ?? true else {
            return try await fallback.read(digest, offset: offset, limit: limit)
        }
        // A blob the fallback lacks is NOT_FOUND here, after one fetch.
        let whole = try await fallback.read(digest, offset: 0, limit: nil)
        do {
            try await cache.write(digest, body: whole)
        } catch let error as StrataError where error.code == .invalidArgument {
            // The cache verifies what it stores: the fallback's bytes do not match their digest.
            throw StrataError(.dataLoss, "blob \(digest) is corrupt in the fallback storage: \(error.message)")
        } catch {
            // The cache could not take it (full, down) or the stream broke: the fallback answers alone.
            return try await fallback.read(digest, offset: offset, limit: limit)
        }
        do {
            return try await cache.read(digest, offset: offset, limit: limit)
        } catch let error as StrataError where error.code == .notFound {
            // Evicted again at once (a cache smaller than the traffic).
            return try await fallback.read(digest, offset: offset, limit: limit)
        }
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        guard digest.sizeBytes <= smallBlobLimit else {
            try await fallback.write(digest, body: body)
            return
        }
        let data = try await body.verifying(digest).collect(limit: digest.sizeBytes)
        if let deferred, await deferred.enqueue(digest, data) {
            try? await cache.write(digest, data: data)
            return
        }
        async let cached: Void? = try? cache.write(digest, data: data)
        try await fallback.write(digest, data: data)
        _ = await cached
    }

    public func delete(_ digests: [Digest]) async throws {
        await deferred?.cancel(digests)
        try await fallback.delete(digests)
        try await cache.delete(digests)
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        var results = await cache.readBatch(digests)
        var misses: [Int] = []
        for (index, result) in results.enumerated() {
            if case .failure(let error) = result, error.code == .notFound { misses.append(index) }
        }
        countReads(digests.count, misses: misses.count)
        guard !misses.isEmpty else { return results }
        var fromFallback: [Int] = []
        for index in misses {
            if let data = await deferred?.pendingData(digests[index]) {
                results[index] = .success(data)
            } else {
                fromFallback.append(index)
            }
        }
        let fetched = await fallback.readBatch(fromFallback.map { digests[$0] })
        var fill: [(digest: Digest, data: Data)] = []
        for (index, result) in zip(fromFallback, fetched) {
            results[index] = result
            if case .success(let data) = result { fill.append((digests[index], data)) }
        }
        if !fill.isEmpty { _ = await cache.writeBatch(fill) }
        return results
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        var results = [Result<Void, StrataError>?](repeating: nil, count: blobs.count)
        var synchronous: [Int] = []
        if let deferred {
            for (index, blob) in blobs.enumerated() {
                do {
                    try blob.digest.verify(blob.data)
                } catch {
                    results[index] = .failure(StrataError.from(error))
                    continue
                }
                if await deferred.enqueue(blob.digest, blob.data) { results[index] = .success(()) } else { synchronous.append(index) }
            }
        } else {
            synchronous = Array(blobs.indices)
        }
        async let cached = cache.writeBatch(blobs)
        let written = await fallback.writeBatch(synchronous.map { blobs[$0] })
        for (index, result) in zip(synchronous, written) { results[index] = result }
        _ = await cached
        return results.map { $0 ?? .failure(.internal("a batch item got no result")) }
    }
}

/// The queue of small blobs acknowledged by a `WithCacheBlobStore` and not yet in its fallback.
actor DeferredWrites {
    private let fallback: any BlobStore
    private let writers: Int
    private let bytesLimit: Int64
    private let logger: Logger
    private var pending: [Digest: Data] = [:]
    /// Digests to write, oldest first from `queueHead` (popping by index: a queue of many small blobs
    /// must not shift its whole array per write).
    private var queue: [Digest] = []
    private var queueHead = 0
    private var pendingBytes: Int64 = 0
    private var activeWriters = 0
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []

    init(fallback: any BlobStore, writers: Int, bytesLimit: Int64, logger: Logger) {
        self.fallback = fallback
        self.writers = max(1, writers)
        self.bytesLimit = bytesLimit
        self.logger = logger
    }

    var count: Int { pending.count }

    /// Takes a verified blob for a background write; false when the queue is full (write it now).
    func enqueue(_ digest: Digest, _ data: Data) -> Bool {
        if pending[digest] != nil { return true }
        guard pendingBytes + Int64(data.count) <= bytesLimit else { return false }
        pending[digest] = data
        pendingBytes += Int64(data.count)
        queue.append(digest)
        if activeWriters < writers {
            activeWriters += 1
            Task { await self.work() }
        }
        return true
    }

    func pendingDigests(among digests: [Digest]) -> Set<Digest> {
        Set(digests.filter { pending[$0] != nil })
    }

    func pendingData(_ digest: Digest) -> Data? { pending[digest] }

    func cancel(_ digests: [Digest]) {
        for digest in digests {
            if let data = pending.removeValue(forKey: digest) { pendingBytes -= Int64(data.count) }
        }
    }

    func drain(timeout: Duration) async {
        guard !pending.isEmpty else { return }
        logger.info("writing \(pending.count) deferred blobs to the fallback storage before stopping")
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while !pending.isEmpty && clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        if !pending.isEmpty {
            logger.error("\(pending.count) acknowledged blobs could not be written to the fallback storage before stopping")
        }
    }

    private func work() async {
        var failures = 0
        while queueHead < queue.count {
            let digest = queue[queueHead]
            queueHead += 1
            if queueHead >= 1024 && queueHead * 2 >= queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
            guard let data = pending[digest] else { continue }
            do {
                try await fallback.write(digest, data: data)
                if pending.removeValue(forKey: digest) != nil { pendingBytes -= Int64(data.count) }
                failures = 0
            } catch {
                // Keep the blob: it was acknowledged. Retry later with a capped backoff.
                failures += 1
                logger.warning("deferred write of \(digest) to the fallback storage failed (attempt \(failures)): \(error)")
                queue.append(digest)
                try? await Task.sleep(for: .milliseconds(min(10_000, 50 << min(failures, 8))))
            }
        }
        activeWriters -= 1
    }
}
