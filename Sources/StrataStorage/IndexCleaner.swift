import Foundation
import StrataCore

/// What `strata cleanup` keeps an index under, with BuildGrid's option names in the comments.
public struct CleanupPolicy: Sendable, Equatable {
    public struct Watermarks: Sendable, Equatable {
        /// A pass deletes when the total reaches this…
        public var high: Int64
        /// …and stops once it is at or below this.
        public var low: Int64

        public init(high: Int64, low: Int64) {
            self.high = high
            self.low = low
        }
    }

    /// `high-watermark` / `low-watermark`, in bytes.
    public var bytes: Watermarks?
    /// `high-blob-count-watermark` / `low-blob-count-watermark`.
    public var blobCount: Watermarks?
    /// `batch-size`: bytes freed per batch, the unit between two checks of the totals and of a stop request.
    public var batchSize: Int64
    /// `only-if-unused-for`: a blob used more recently than this is never deleted.
    public var onlyIfUnusedFor: Duration
    /// `large-blob-threshold` and `large-blob-lifetime`: blobs of at least this many bytes expire once
    /// unused for the lifetime, whatever the watermarks say (still never inside `onlyIfUnusedFor`).
    public var largeBlobThreshold: Int64?
    public var largeBlobLifetime: Duration?
    /// `retry-limit`: further attempts of an index or storage call that answered UNAVAILABLE.
    public var retryLimit: Int
    /// Entries listed per batch: bounds one index call.
    public var maxBlobsPerBatch: Int

    /// Bazel's default remote-cache TTL assumption: outputs it saw within 3 hours are expected to stay.
    public static let defaultProtection: Duration = .seconds(3 * 3600)

    public init(
        bytes: Watermarks? = nil, blobCount: Watermarks? = nil, batchSize: Int64 = 100 << 20,
        onlyIfUnusedFor: Duration = defaultProtection, largeBlobThreshold: Int64? = nil,
        largeBlobLifetime: Duration? = nil, retryLimit: Int = 10, maxBlobsPerBatch: Int = 1000
    ) {
        self.bytes = bytes
        self.blobCount = blobCount
        self.batchSize = batchSize
        self.onlyIfUnusedFor = onlyIfUnusedFor
        self.largeBlobThreshold = largeBlobThreshold
        self.largeBlobLifetime = largeBlobLifetime
        self.retryLimit = retryLimit
        self.maxBlobsPerBatch = maxBlobsPerBatch
    }
}

/// What one cleanup pass did (or, dry, would do).
public struct CleanupReport: Sendable {
    public var dryRun = false
    public var before = IndexTotals(bytes: 0, blobs: 0)
    public var after = IndexTotals(bytes: 0, blobs: 0)
    /// Whether a high watermark was reached.
    public var triggered = false
    public var deletedBlobs: Int64 = 0
    public var deletedBytes: Int64 = 0
    /// Of the above, large blobs past `large-blob-lifetime`.
    public var expiredLargeBlobs: Int64 = 0
    public var expiredLargeBytes: Int64 = 0
    /// Listed as unused but used again before their entry was removed: kept.
    public var keptInUse: Int64 = 0
    /// Removed from the index but not from the storage (the storage failed): the janitor removes them.
    public var orphansLeft: Int64 = 0
    /// Written again by a client between the index removal and the storage delete although the blob
    /// was marked "being deleted" (the delete outlived its lease): their new entries were dropped,
    /// since the blob is gone, so clients hear "missing" and upload again.
    public var rewrittenDuringDelete: Int64 = 0
    /// The low watermark was not reached because every remaining blob was used within `only-if-unused-for`.
    public var stoppedByProtection = false
    /// A stop was requested (SIGTERM) and the pass ended after the current batch.
    public var stoppedByRequest = false
    /// For a dry run: what would be deleted, least recently used first.
    public var wouldDelete: [IndexEntry] = []
    public var seconds: Double = 0

    public var summary: String {
        var text = dryRun
            ? "dry run: would delete \(wouldDelete.count) blobs (\(wouldDelete.reduce(0) { $0 + $1.digest.sizeBytes }) bytes)"
            : "deleted \(deletedBlobs) blobs (\(deletedBytes) bytes)"
        if expiredLargeBlobs > 0 { text += ", of which \(expiredLargeBlobs) large blobs past their lifetime (\(expiredLargeBytes) bytes)" }
        text += " in \(String(format: "%.2f", seconds)) s; index \(before.bytes) → \(after.bytes) bytes, \(before.blobs) → \(after.blobs) blobs"
        if !triggered { text += "; below the high watermark" }
        if keptInUse > 0 { text += "; \(keptInUse) kept (used during the pass)" }
        if stoppedByProtection { text += "; stopped above the low watermark: the rest was used within only-if-unused-for" }
        if orphansLeft > 0 { text += "; \(orphansLeft) blobs left in the storage for the janitor (storage delete failed)" }
        if rewrittenDuringDelete > 0 { text += "; \(rewrittenDuringDelete) blobs re-uploaded during their deletion were dropped from the index" }
        if stoppedByRequest { text += "; stopped on request" }
        return text
    }
}

/// Keeps an index (and so its backing storage) under a size budget: the logic of `strata cleanup`.
///
/// Deleting goes index first, then storage, and only what the index removal returned: the removal
/// re-checks every access time against `now - only-if-unused-for` atomically, so a blob used since it
/// was listed (FindMissingBlobs, a read, a write, an action-cache hit checking its outputs) survives.
/// A failed storage delete leaves an orphan blob for the janitor, never an index entry without its blob.
public struct IndexCleaner: Sendable {
    public let index: any IndexedBlobStore
    public let policy: CleanupPolicy
    private let clock: @Sendable () -> Date
    private let progress: @Sendable (String) -> Void

    /// Entries a dry run lists at most: a dry run cannot page by deleting.
    public static let dryRunListLimit = 100_000

    public init(
        index: any IndexedBlobStore, policy: CleanupPolicy, clock: @escaping @Sendable () -> Date = Date.init,
        progress: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.index = index
        self.policy = policy
        self.clock = clock
        self.progress = progress
    }

    /// One pass: expire large blobs, then, if a high watermark is reached, delete least recently used
    /// blobs batch by batch until the totals are at or below the low watermarks. `shouldStop` is asked
    /// between batches.
    public func runPass(dryRun: Bool = false, shouldStop: @Sendable () -> Bool = { false }) async throws -> CleanupReport {
        let started = ContinuousClock.now
        var report = CleanupReport()
        report.dryRun = dryRun
        let now = clock()
        let protectedAfter = now - policy.onlyIfUnusedFor.timeInterval
        report.before = try await retrying("totals") { try await index.totals() }
        var totals = report.before
        var simulatedDeleted = Set<Digest>()

        // Large blobs past their lifetime go whatever the watermarks say.
        if let threshold = policy.largeBlobThreshold, let lifetime = policy.largeBlobLifetime {
            let cutoff = min(protectedAfter, now - lifetime.timeInterval)
            let expired = try await expiredLargeBlobs(threshold: threshold, cutoff: cutoff)
            var start = 0
            while start < expired.count, !shouldStop() {
                let batch = Array(expired[start..<min(start + policy.maxBlobsPerBatch, expired.count)])
                start += batch.count
                if dryRun {
                    report.wouldDelete += batch
                    simulatedDeleted.formUnion(batch.map(\.digest))
                    totals.bytes -= batch.reduce(0) { $0 + $1.digest.sizeBytes }
                    totals.blobs -= Int64(batch.count)
                    continue
                }
                let deleted = try await deleteBatch(batch.map(\.digest), cutoff: cutoff, report: &report)
                report.expiredLargeBlobs += Int64(deleted.count)
                report.expiredLargeBytes += deleted.reduce(0) { $0 + $1.sizeBytes }
                progress("expired \(report.expiredLargeBlobs) large blobs (\(report.expiredLargeBytes) bytes)")
            }
            if !dryRun { totals = try await retrying("totals") { try await index.totals() } }
        }

        report.triggered = reachedHighWatermark(totals)
        if report.triggered {
            if dryRun {
                try await simulate(totals: totals, cutoff: protectedAfter, skipping: simulatedDeleted, report: &report)
            } else {
                while true {
                    if shouldStop() { report.stoppedByRequest = true; break }
                    let (needBytes, needBlobs) = excess(totals)
                    if needBytes <= 0 && needBlobs <= 0 { break }
                    let listed = try await retrying("listing least recently used blobs") {
                        try await index.leastRecentlyAccessed(before: protectedAfter, limit: policy.maxBlobsPerBatch)
                    }
                    if listed.isEmpty { report.stoppedByProtection = true; break }
                    let batch = choose(listed, needBytes: needBytes, needBlobs: needBlobs)
                    _ = try await deleteBatch(batch.map(\.digest), cutoff: protectedAfter, report: &report)
                    totals = try await retrying("totals") { try await index.totals() }
                    progress("deleted \(report.deletedBlobs) blobs (\(report.deletedBytes) bytes); index at \(totals.bytes) bytes, \(totals.blobs) blobs")
                }
            }
        }
        if shouldStop() { report.stoppedByRequest = true }
        report.after = dryRun ? totals : try await retrying("totals") { try await index.totals() }
        report.seconds = (ContinuousClock.now - started).timeInterval
        return report
    }

    func reachedHighWatermark(_ totals: IndexTotals) -> Bool {
        (policy.bytes.map { totals.bytes >= $0.high } ?? false) || (policy.blobCount.map { totals.blobs >= $0.high } ?? false)
    }

    /// Bytes and blobs above the low watermarks.
    func excess(_ totals: IndexTotals) -> (bytes: Int64, blobs: Int64) {
        (policy.bytes.map { totals.bytes - $0.low } ?? 0, policy.blobCount.map { totals.blobs - $0.low } ?? 0)
    }

    /// The least recently used prefix of `listed` that frees a batch's worth (or what is still needed).
    func choose(_ listed: [IndexEntry], needBytes: Int64, needBlobs: Int64) -> [IndexEntry] {
        let byteGoal = min(policy.batchSize, max(needBytes, 0))
        let blobGoal = max(needBlobs, 0)
        var chosen: [IndexEntry] = []
        var bytes: Int64 = 0
        for entry in listed {
            if !chosen.isEmpty && bytes >= byteGoal && Int64(chosen.count) >= blobGoal { break }
            chosen.append(entry)
            bytes += entry.digest.sizeBytes
        }
        return chosen
    }

    private func simulate(totals: IndexTotals, cutoff: Date, skipping: Set<Digest>, report: inout CleanupReport) async throws {
        let listed = try await retrying("listing least recently used blobs") {
            try await index.leastRecentlyAccessed(before: cutoff, limit: Self.dryRunListLimit)
        }
        var remaining = totals
        for entry in listed where !skipping.contains(entry.digest) {
            let (needBytes, needBlobs) = excess(remaining)
            if needBytes <= 0 && needBlobs <= 0 { return }
            report.wouldDelete.append(entry)
            remaining.bytes -= entry.digest.sizeBytes
            remaining.blobs -= 1
        }
        let (needBytes, needBlobs) = excess(remaining)
        if (needBytes > 0 || needBlobs > 0) && listed.count < Self.dryRunListLimit { report.stoppedByProtection = true }
    }

    private func expiredLargeBlobs(threshold: Int64, cutoff: Date) async throws -> [IndexEntry] {
        guard let enumerable = index as? any EnumerableIndex else {
            throw StrataError.internal("large-blob-lifetime needs an index that can list its entries; this one cannot")
        }
        var expired: [IndexEntry] = []
        try await enumerable.forEachEntryPage(pageSize: policy.maxBlobsPerBatch) { page in
            expired += page.filter { $0.digest.sizeBytes >= threshold && $0.accessed < cutoff }
        }
        // A walk may report an entry twice.
        var seen = Set<Digest>()
        return expired.sorted { $0.accessed < $1.accessed }.filter { seen.insert($0.digest).inserted }
    }

    /// Removes the entries still unused since `cutoff`, then exactly those blobs from the storage.
    /// Returns the digests deleted from both.
    private func deleteBatch(_ digests: [Digest], cutoff: Date, report: inout CleanupReport) async throws -> [Digest] {
        let removed = try await retrying("removing index entries") {
            try await index.removeEntries(digests, notAccessedSince: cutoff)
        }
        report.keptInUse += Int64(digests.count - removed.count)
        guard !removed.isEmpty else { return [] }
        do {
            try await retrying("deleting from the storage") { try await index.backingStore.delete(removed) }
        } catch {
            report.orphansLeft += Int64(removed.count)
            progress("storage delete failed, \(removed.count) blobs left for the janitor: \(error)")
            try await retrying("clearing deletion marks") { try await index.finishDeleting(removed) }
            return []
        }
        // Writes of these blobs that waited for the delete go ahead now, and store them anew.
        try await retrying("clearing deletion marks") { try await index.finishDeleting(removed) }
        report.deletedBlobs += Int64(removed.count)
        report.deletedBytes += removed.reduce(0) { $0 + $1.sizeBytes }
        report.rewrittenDuringDelete += Int64(try await dropEntriesOfVanishedBlobs(removed))
        return removed
    }

    /// A backstop for the marks that keep writes and deletes apart: should a delete outlive its
    /// deletion lease, a client may have written one of `deleted` between the index removal and the
    /// storage delete, so its entry is back but its blob is gone. Drops such entries, so the index
    /// never names a missing blob; returns how many.
    func dropEntriesOfVanishedBlobs(_ deleted: [Digest]) async throws -> Int {
        try await index.dropEntriesOfVanishedBlobs(deleted, retryLimit: policy.retryLimit)
    }

    func retrying<T: Sendable>(_ what: String, _ operation: () async throws -> T) async throws -> T {
        try await retryingUnavailable(limit: policy.retryLimit, what, operation)
    }
}

extension IndexedBlobStore {
    /// See `IndexCleaner.dropEntriesOfVanishedBlobs`; shared with the janitor.
    func dropEntriesOfVanishedBlobs(_ deleted: [Digest], retryLimit: Int) async throws -> Int {
        guard !deleted.isEmpty else { return 0 }
        func retrying<T: Sendable>(_ what: String, _ operation: () async throws -> T) async throws -> T {
            try await retryingUnavailable(limit: retryLimit, what, operation)
        }
        let indexedAgain: [Digest]
        if let enumerable = self as? any EnumerableIndex {
            // A blob the index holds itself was written again whole, not lost with the storage delete.
            let backed = enumerable.storedInBackingStore(deleted)
            guard !backed.isEmpty else { return 0 }
            let flags = try await retrying("checking the index") { try await enumerable.hasEntries(backed) }
            indexedAgain = zip(backed, flags).filter(\.1).map(\.0)
        } else {
            let missing = Set(try await retrying("checking the index") { try await self.findMissing(deleted) })
            indexedAgain = deleted.filter { !missing.contains($0) }
        }
        guard !indexedAgain.isEmpty else { return 0 }
        let vanished = try await retrying("checking the storage") { try await self.backingStore.findMissing(indexedAgain) }
        guard !vanished.isEmpty else { return 0 }
        let removed = try await retrying("removing index entries") {
            try await self.removeEntries(vanished, notAccessedSince: .distantFuture)
        }
        try await retrying("clearing deletion marks") { try await self.finishDeleting(removed) }
        return removed.count
    }
}

/// Runs `operation`, again up to `limit` more times while it answers UNAVAILABLE (50 ms, 100 ms…
/// at most 5 s apart); other errors end it at once.
func retryingUnavailable<T: Sendable>(limit: Int, _ what: String, _ operation: () async throws -> T) async throws -> T {
    var attempt = 0
    while true {
        do {
            return try await operation()
        } catch let error as StrataError where error.code == .unavailable && attempt < limit {
            attempt += 1
            try await Task.sleep(for: .milliseconds(min(5000, 50 << min(attempt - 1, 10))))
        }
    }
}

