import Foundation
import StrataCore

/// What one janitor pass found and did.
public struct JanitorReport: Sendable {
    public var dryRun = false
    public var blobsListed: Int64 = 0
    public var entriesListed: Int64 = 0
    /// Blobs in the storage the index does not know, older than the grace period: deleted (or, dry, would be).
    public var orphansDeleted: Int64 = 0
    public var orphanBytes: Int64 = 0
    /// Blobs still inside the grace period, not checked (one may be being written right now): left alone.
    public var youngBlobsSkipped: Int64 = 0
    /// Index entries whose blob the storage no longer has: removed (or, dry, would be).
    public var danglingEntriesRemoved: Int64 = 0
    public var stoppedByRequest = false
    public var seconds: Double = 0

    public var summary: String {
        let verb = dryRun ? "would delete" : "deleted"
        var text = "\(dryRun ? "dry run: " : "")\(verb) \(orphansDeleted) orphan blobs (\(orphanBytes) bytes) of \(blobsListed) listed"
        text += ", \(dryRun ? "would remove" : "removed") \(danglingEntriesRemoved) index entries without a blob of \(entriesListed)"
        text += "; \(youngBlobsSkipped) blobs inside the grace period left alone; \(String(format: "%.2f", seconds)) s"
        if stoppedByRequest { text += "; stopped on request" }
        return text
    }
}

/// Reconciles a storage with its index (`strata janitor`): blobs the index does not know are deleted
/// once older than the grace period (a write stores the blob before the index records it), and
/// entries whose blob is gone are removed.
public struct Janitor: Sendable {
    public let index: any EnumerableIndex
    public let storage: any ListableBlobStore
    public let gracePeriod: Duration
    public let retryLimit: Int
    public let pageSize: Int
    /// The largest share (0...1) of the storage's blobs a pass deletes as orphans; nil: no limit
    /// (`--force`). A pass that would delete more deletes nothing and fails, saying so: so many orphans
    /// mean the index is not the one that records this storage's writes (a second index or a writer
    /// bypassing it, a flushed or new index), and deleting them would lose acknowledged blobs.
    public let maxDeleteShare: Double?
    private let clock: @Sendable () -> Date

    /// The default `maxDeleteShare`: a healthy storage has few orphans (writes interrupted between the
    /// storage and the index).
    public static let defaultMaxDeleteShare = 0.5

    /// Fails with INTERNAL when the index's storage cannot list its blobs.
    public init(
        index: any EnumerableIndex, gracePeriod: Duration, retryLimit: Int = 10, pageSize: Int = 1000,
        maxDeleteShare: Double? = Janitor.defaultMaxDeleteShare, clock: @escaping @Sendable () -> Date = Date.init
    ) throws(StrataError) {
        // The outermost layer that can list: through decorators that only observe (metrics) to the
        // storage, or the verifying store around it.
        var backing = index.backingStore
        while !(backing is any ListableBlobStore), let transparent = backing as? any TransparentBlobStore {
            backing = transparent.wrapped
        }
        guard let storage = backing as? any ListableBlobStore else {
            throw .internal("the janitor needs a storage that can list its blobs (!disk-storage, !s3-storage, !sql-storage); \(type(of: index.backingStore)) cannot")
        }
        self.index = index
        self.storage = storage
        self.gracePeriod = gracePeriod
        self.retryLimit = retryLimit
        self.pageSize = pageSize
        self.maxDeleteShare = maxDeleteShare
        self.clock = clock
    }

    /// With `maxDeleteShare`, a pass that deletes first counts, as `dryRun` does (listing the storage
    /// and the index twice), and fails with FAILED_PRECONDITION, deleting nothing, when the orphans are
    /// more than that share of the storage's blobs.
    public func runPass(dryRun: Bool = false, shouldStop: @Sendable () -> Bool = { false }) async throws -> JanitorReport {
        if !dryRun, let share = maxDeleteShare, share < 1 {
            let preview = try await pass(dryRun: true, shouldStop: shouldStop)
            if preview.stoppedByRequest {
                var stopped = JanitorReport()
                stopped.stoppedByRequest = true
                stopped.seconds = preview.seconds
                return stopped
            }
            if Double(preview.orphansDeleted) > share * Double(preview.blobsListed) {
                let percent = Double(preview.orphansDeleted) * 100 / Double(max(1, preview.blobsListed))
                throw StrataError.failedPrecondition(
                    "refusing to delete \(preview.orphansDeleted) of the \(preview.blobsListed) blobs in the storage "
                        + "(\(String(format: "%.0f", percent))%) as orphans: more than the limit of \(share) of a storage per pass. "
                        + "So many blobs unknown to the index mean it is not what records this storage's writes (another index "
                        + "or a service writing past it, or an index that was flushed or is new); deleting them would lose "
                        + "acknowledged blobs. Check with --dry-run; --force deletes them anyway")
            }
        }
        return try await pass(dryRun: dryRun, shouldStop: shouldStop)
    }

    private func pass(dryRun: Bool, shouldStop: @Sendable () -> Bool) async throws -> JanitorReport {
        let started = ContinuousClock.now
        var report = JanitorReport()
        report.dryRun = dryRun
        let retryLimit = self.retryLimit
        func retrying<T: Sendable>(_ what: String, _ operation: () async throws -> T) async throws -> T {
            try await retryingUnavailable(limit: retryLimit, what, operation)
        }
        struct Stop: Error {}

        do {
            let youngerThan = clock() - gracePeriod.timeInterval
            try await storage.forEachBlobPage(pageSize: pageSize) { page in
                if shouldStop() { throw Stop() }
                report.blobsListed += Int64(page.count)
                let old = page.filter { $0.modified < youngerThan }.map(\.digest)
                report.youngBlobsSkipped += Int64(page.count - old.count)
                guard !old.isEmpty else { return }
                if dryRun {
                    let indexed = try await retrying("checking the index") { try await index.hasEntries(old) }
                    let orphans = zip(old, indexed).filter { !$0.1 }.map(\.0)
                    report.orphansDeleted += Int64(orphans.count)
                    report.orphanBytes += orphans.reduce(0) { $0 + $1.sizeBytes }
                    return
                }
                // Claimed atomically against writes: a blob being uploaded again right now is not an
                // orphan, and an upload starting now waits until the delete is over.
                let orphans = try await retrying("claiming orphans") { try await index.claimOrphans(old) }
                guard !orphans.isEmpty else { return }
                do {
                    try await retrying("deleting orphans") { try await storage.delete(orphans) }
                } catch {
                    try await retrying("clearing deletion marks") { try await index.finishDeleting(orphans) }
                    throw error
                }
                try await retrying("clearing deletion marks") { try await index.finishDeleting(orphans) }
                report.orphansDeleted += Int64(orphans.count)
                report.orphanBytes += orphans.reduce(0) { $0 + $1.sizeBytes }
                _ = try await index.dropEntriesOfVanishedBlobs(orphans, retryLimit: retryLimit)
            }

            try await index.forEachEntryPage(pageSize: pageSize) { page in
                if shouldStop() { throw Stop() }
                report.entriesListed += Int64(page.count)
                // An entry recorded or used after this instant (a re-upload) keeps its place.
                let checked = clock()
                // Entries holding their blob themselves have nothing in the storage to lose.
                let digests = index.storedInBackingStore(page.map(\.digest).uniqued())
                guard !digests.isEmpty else { return }
                let missing = try await retrying("checking the storage") { try await storage.findMissing(digests) }
                guard !missing.isEmpty else { return }
                if dryRun {
                    report.danglingEntriesRemoved += Int64(missing.count)
                } else {
                    let removed = try await retrying("removing index entries") {
                        try await index.removeEntries(missing, notAccessedSince: checked)
                    }
                    // Nothing to delete from the storage: the blobs are gone already.
                    try await retrying("clearing deletion marks") { try await index.finishDeleting(removed) }
                    report.danglingEntriesRemoved += Int64(removed.count)
                }
            }
        } catch is Stop {
            report.stoppedByRequest = true
        }
        report.seconds = (ContinuousClock.now - started).timeInterval
        return report
    }
}
