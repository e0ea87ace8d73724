import Foundation
import StrataCore

/// What one scrub pass of a storage found and did.
public struct ScrubReport: Sendable {
    public var dryRun = false
    /// Blobs re-hashed, and their bytes.
    public var checked: Int64 = 0
    public var bytes: Int64 = 0
    /// Blobs whose stored copy did not match its digest (hash or length).
    public var corrupt: Int64 = 0
    /// The first `Scrubber.listedCorruptLimit` of them, for the operator.
    public var corruptBlobs: [Digest] = []
    /// Of those, removed (with their index entry); a dry run removes none.
    public var removed: Int64 = 0
    /// Listed, then gone before they were read (deleted or evicted meanwhile): not checked.
    public var vanished: Int64 = 0
    public var stoppedByRequest = false
    public var seconds: Double = 0

    public var summary: String {
        var text = "\(dryRun ? "dry run: " : "")checked \(checked) blobs (\(bytes) bytes): \(corrupt) corrupt, \(removed) removed"
        if vanished > 0 { text += ", \(vanished) gone before they were read" }
        text += "; \(String(format: "%.2f", seconds)) s"
        if stoppedByRequest { text += "; stopped on request" }
        return text
    }
}

/// Re-hashes every blob a storage holds and removes the corrupt ones (`strata scrub`): what reads find
/// one blob at a time (see `VerifyingBlobStore`), found ahead of any reader.
///
/// Safe next to a live server: it only reads, and removes only a copy found bad twice (read again just
/// before the removal, so a copy healed meanwhile by an upload stays). Removals go through `remover`:
/// the index over the storage when there is one, so the entry goes with the blob and FindMissingBlobs
/// reports it missing (the index skips a blob being written right now), else the storage itself.
/// `bytesPerSecond` paces the reads so that a pass does not starve the server of disk or network.
public struct Scrubber: Sendable {
    /// The storage read, without verification of its own: the scrubber judges the bytes itself.
    public let storage: any ListableBlobStore
    public let remover: any BlobStore
    public let bytesPerSecond: Int64?
    public let pageSize: Int

    public init(storage: any ListableBlobStore, remover: any BlobStore, bytesPerSecond: Int64?, pageSize: Int = 1000) {
        self.storage = storage
        self.remover = remover
        self.bytesPerSecond = bytesPerSecond.flatMap { $0 > 0 ? $0 : nil }
        self.pageSize = pageSize
    }

    public func runPass(dryRun: Bool = false, shouldStop: @Sendable () -> Bool = { false }) async throws -> ScrubReport {
        let clock = ContinuousClock()
        let started = clock.now
        var report = ScrubReport()
        report.dryRun = dryRun
        struct Stop: Error {}
        do {
            try await storage.forEachBlobPage(pageSize: pageSize) { page in
                for blob in page {
                    if shouldStop() { throw Stop() }
                    let digest = blob.digest
                    let verdict = try await check(digest) { read in
                        report.bytes += read
                        try await pace(bytes: report.bytes, since: started, clock: clock)
                    }
                    switch verdict {
                    case .vanished:
                        report.vanished += 1
                        continue
                    case .intact:
                        report.checked += 1
                        continue
                    case .corrupt:
                        report.checked += 1
                        report.corrupt += 1
                        if report.corruptBlobs.count < Self.listedCorruptLimit { report.corruptBlobs.append(digest) }
                    }
                    guard !dryRun else { continue }
                    // Found bad twice before it goes: an upload may have healed it since the first look.
                    guard case .corrupt = try await check(digest, pacing: { _ in }) else { continue }
                    try await remover.delete([digest])
                    report.removed += 1
                }
            }
        } catch is Stop {
            report.stoppedByRequest = true
        }
        report.seconds = (clock.now - started).timeInterval
        return report
    }

    public static let listedCorruptLimit = 1000

    private enum Verdict {
        case intact
        case corrupt
        /// Gone since the listing (deleted, evicted): nothing to check.
        case vanished
    }

    /// The state of the stored copy of `digest`, hashed as it streams; `pacing` hears of each chunk.
    private func check(_ digest: Digest, pacing: (Int64) async throws -> Void) async throws -> Verdict {
        var hasher = digest.function.makeHasher()
        do {
            for try await chunk in try await storage.read(digest, offset: 0, limit: nil) {
                hasher.update(chunk)
                try await pacing(Int64(chunk.count))
                if hasher.byteCount > digest.sizeBytes { break }
            }
        } catch let error as StrataError where error.code == .notFound {
            return .vanished
        } catch let error as StrataError where error.code == .dataLoss {
            return .corrupt  // the storage found the length wrong
        }
        return hasher.byteCount == digest.sizeBytes && hasher.finalizeDigest() == digest ? .intact : .corrupt
    }

    /// Sleeps while more than `bytesPerSecond` have been read on average since `start`.
    private func pace(bytes: Int64, since start: ContinuousClock.Instant, clock: ContinuousClock) async throws {
        guard let bytesPerSecond else { return }
        let due = start + .seconds(Double(bytes) / Double(bytesPerSecond))
        if due > clock.now { try await Task.sleep(until: due, clock: clock) }
    }
}
