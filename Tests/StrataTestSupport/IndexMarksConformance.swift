import Foundation
import StrataCore
import StrataStorage
import Synchronization

/// The contract that keeps writes and deletes of one blob apart in every index (`IndexedBlobStore`'s
/// "being written" / "being deleted" marks), as named cases a test target runs against its index:
///
///     @Test(arguments: IndexMarksConformance.cases)
///     func marks(_ check: IndexMarksConformance) async throws {
///         try await check.run { backing, deletionLease in RedisIndex(backingStore: backing, …, deletionLease: deletionLease) }
///     }
///
/// Every case runs over a disk storage that, like every real one, skips a write of a blob it already
/// has: the situation in which an unprotected re-upload during a delete is lost.
public struct IndexMarksConformance: Sendable, CustomStringConvertible {
    public typealias MakeIndex = @Sendable (_ backing: any BlobStore, _ deletionLease: Duration) async throws -> any EnumerableIndex

    public let name: String
    let body: @Sendable (Fixture) async throws -> Void

    public var description: String { name }

    public static let cases: [IndexMarksConformance] = [
        .init(name: "a re-upload during a cleanup delete waits for it and is kept", body: reuploadDuringDelete),
        .init(name: "a batch re-upload during a cleanup delete waits for it and is kept", body: batchReuploadDuringDelete),
        .init(name: "a blob being written is not removed", body: removalSkipsBlobBeingWritten),
        .init(name: "a blob being written is not an orphan", body: orphanClaimSkipsBlobBeingWritten),
        .init(name: "an upload of a claimed orphan waits for its delete and is kept", body: uploadOfClaimedOrphan),
        .init(name: "a failed write leaves no mark", body: failedWriteLeavesNoMark),
        .init(name: "a deletion mark nobody clears expires", body: deletionMarkExpires),
        .init(name: "explicit delete skips a blob being written", body: deleteSkipsBlobBeingWritten),
    ]

    /// Runs the case on an index `make` builds over a fresh disk storage (removed after).
    public func run(_ make: @escaping MakeIndex) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-marks-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let disk = DiskBlobStore(path: root, sync: false)
        let gated = GatedWritesBlobStore(disk)
        try await body(Fixture(disk: disk, gated: gated, make: { lease in try await make(gated, lease) }))
    }

    struct Fixture: Sendable {
        /// The storage itself, behind the gate.
        let disk: DiskBlobStore
        let gated: GatedWritesBlobStore
        let make: @Sendable (Duration) async throws -> any EnumerableIndex

        func index(deletionLease: Duration = IndexLeases.deleting) async throws -> any EnumerableIndex {
            try await make(deletionLease)
        }
    }

    /// How long a case waits to see that a write is (still) held back: long enough for an unprotected
    /// write to finish many times over on loopback.
    static let holdBack: Duration = .milliseconds(300)

    /// The blob is stored, readable through the index and in the storage itself.
    static func expectKept(_ blob: Blob, _ index: any EnumerableIndex, _ disk: DiskBlobStore, _ what: String) async throws {
        try expect(try await disk.findMissing([blob.digest]).isEmpty, "\(what): the storage lost the blob")
        try expect(try await index.findMissing([blob.digest]).isEmpty, "\(what): the index does not name the blob")
        try expect(try await index.readAll(blob.digest) == blob.data, "\(what): the blob reads back wrong")
    }

    static func reuploadDuringDelete(_ fixture: Fixture) async throws {
        let index = try await fixture.index()
        let blob = Blob.random(size: 3000)
        try await index.write(blob.digest, data: blob.data)
        // The cleaner's first step: the entry goes, the blob is marked.
        try expect(try await index.removeEntries([blob.digest], notAccessedSince: .distantFuture) == [blob.digest],
                   "an unused blob's entry was not removed")
        try expect(try await index.findMissing([blob.digest]) == [blob.digest], "a removed entry is still reported present")
        // A client, told "missing", uploads it again while the old copy is still stored.
        let upload = Finished { try await index.write(blob.digest, data: blob.data) }
        try await Task.sleep(for: holdBack)
        try expect(!upload.isDone, "a write of a blob being deleted went ahead (the storage skipped it: the delete would lose it)")
        // The cleaner's second step.
        try await index.backingStore.delete([blob.digest])
        try await index.finishDeleting([blob.digest])
        try await upload.value()
        try await expectKept(blob, index, fixture.disk, "after the delete and the re-upload")
    }

    static func batchReuploadDuringDelete(_ fixture: Fixture) async throws {
        let index = try await fixture.index()
        let doomed = Blob.random(size: 3000)
        let other = Blob.random(size: 2000)
        try await index.write(doomed.digest, data: doomed.data)
        try expect(try await index.removeEntries([doomed.digest], notAccessedSince: .distantFuture) == [doomed.digest],
                   "an unused blob's entry was not removed")
        let upload = Finished {
            for result in await index.writeBatch([(doomed.digest, doomed.data), (other.digest, other.data), (doomed.digest, doomed.data)]) {
                try result.get()
            }
        }
        try await Task.sleep(for: holdBack)
        try expect(!upload.isDone, "a batch write of a blob being deleted went ahead")
        try await index.backingStore.delete([doomed.digest])
        try await index.finishDeleting([doomed.digest])
        try await upload.value()
        try await expectKept(doomed, index, fixture.disk, "after the delete and the batch re-upload")
        try await expectKept(other, index, fixture.disk, "the other blob of the batch")
    }

    static func removalSkipsBlobBeingWritten(_ fixture: Fixture) async throws {
        let index = try await fixture.index()
        let blob = Blob.random(size: 3000)
        try await index.write(blob.digest, data: blob.data)
        // A second writer of the blob is inside the storage's write (which will skip: the blob is there).
        fixture.gated.close()
        let upload = Finished { try await index.write(blob.digest, data: blob.data) }
        try await fixture.gated.waitUntilHeld(1)
        try expect(try await index.removeEntries([blob.digest], notAccessedSince: .distantFuture).isEmpty,
                   "the entry of a blob being written was removed for deletion")
        fixture.gated.open()
        try await upload.value()
        try await expectKept(blob, index, fixture.disk, "after the write")
        // The write over, the blob can go.
        try expect(try await index.removeEntries([blob.digest], notAccessedSince: .distantFuture) == [blob.digest],
                   "a blob whose writes are over could not be removed")
        try await index.finishDeleting([blob.digest])
    }

    static func orphanClaimSkipsBlobBeingWritten(_ fixture: Fixture) async throws {
        let index = try await fixture.index()
        let blob = Blob.random(size: 3000)
        // In the storage, not in the index: an orphan, until a client uploads it again.
        try await fixture.disk.write(blob.digest, data: blob.data)
        fixture.gated.close()
        let upload = Finished { try await index.write(blob.digest, data: blob.data) }
        try await fixture.gated.waitUntilHeld(1)
        try expect(try await index.claimOrphans([blob.digest]).isEmpty, "a blob being written was claimed as an orphan")
        fixture.gated.open()
        try await upload.value()
        try expect(try await index.claimOrphans([blob.digest]).isEmpty, "an indexed blob was claimed as an orphan")
        try await expectKept(blob, index, fixture.disk, "after the write")
    }

    static func uploadOfClaimedOrphan(_ fixture: Fixture) async throws {
        let index = try await fixture.index()
        let blob = Blob.random(size: 3000)
        try await fixture.disk.write(blob.digest, data: blob.data)
        try expect(try await index.claimOrphans([blob.digest]) == [blob.digest], "an orphan was not claimed")
        try expect(try await index.claimOrphans([blob.digest]).isEmpty, "an orphan was claimed twice")
        let upload = Finished { try await index.write(blob.digest, data: blob.data) }
        try await Task.sleep(for: holdBack)
        try expect(!upload.isDone, "a write of a claimed orphan went ahead before its delete")
        try await fixture.disk.delete([blob.digest])
        try await index.finishDeleting([blob.digest])
        try await upload.value()
        try await expectKept(blob, index, fixture.disk, "after the orphan's delete and the upload")
    }

    static func failedWriteLeavesNoMark(_ fixture: Fixture) async throws {
        let index = try await fixture.index()
        let blob = Blob.random(size: 3000)
        let absent = Blob.random(size: 3000)
        try await index.write(blob.digest, data: blob.data)
        // Wrong bytes for a digest the storage lacks: refused, after the write was marked.
        do {
            try await index.write(absent.digest, data: blob.data)
            throw ConformanceFailure("a write of wrong bytes was accepted")
        } catch let error as StrataError where error.code == .invalidArgument {}
        let wrong = await index.writeBatch([(absent.digest, blob.data)])
        try expect(wrong.count == 1 && (try? wrong[0].get()) == nil, "a batch write of wrong bytes was accepted")
        try expect(try await index.claimOrphans([absent.digest]) == [absent.digest],
                   "a failed write left its blob marked as being written")
        try await index.finishDeleting([absent.digest])
        // Wrong bytes for a stored blob's digest: refused too (the storage checks before it skips).
        _ = try? await index.write(blob.digest, data: absent.data)
        try expect(try await index.removeEntries([blob.digest], notAccessedSince: .distantFuture) == [blob.digest],
                   "a failed write left a stored blob marked as being written")
        try await index.finishDeleting([blob.digest])
    }

    static func deletionMarkExpires(_ fixture: Fixture) async throws {
        let index = try await fixture.index(deletionLease: .milliseconds(500))
        let blob = Blob.random(size: 3000)
        try await index.write(blob.digest, data: blob.data)
        try expect(try await index.removeEntries([blob.digest], notAccessedSince: .distantFuture) == [blob.digest],
                   "an unused blob's entry was not removed")
        // The cleaner "crashed": nobody clears the mark. The upload waits out the lease, then goes ahead.
        let upload = Finished { try await index.write(blob.digest, data: blob.data) }
        let deadline = ContinuousClock.now + .seconds(30)
        while !upload.isDone {
            try expect(ContinuousClock.now < deadline, "a write still waits 30 s after the deletion lease ran out")
            try await Task.sleep(for: .milliseconds(50))
        }
        try await upload.value()
        try await expectKept(blob, index, fixture.disk, "after the lease ran out")
    }

    static func deleteSkipsBlobBeingWritten(_ fixture: Fixture) async throws {
        let index = try await fixture.index()
        let blob = Blob.random(size: 3000)
        let idle = Blob.random(size: 2000)
        try await index.write(blob.digest, data: blob.data)
        try await index.write(idle.digest, data: idle.data)
        fixture.gated.close()
        let upload = Finished { try await index.write(blob.digest, data: blob.data) }
        try await fixture.gated.waitUntilHeld(1)
        try await index.delete([blob.digest, idle.digest])
        fixture.gated.open()
        try await upload.value()
        // As if the write came after the delete.
        try await expectKept(blob, index, fixture.disk, "a blob written during a delete")
        try expect(try await fixture.disk.findMissing([idle.digest]) == [idle.digest], "delete left an idle blob")
        try expect(try await index.findMissing([idle.digest]) == [idle.digest], "delete left an idle blob's entry")
    }
}

/// A storage whose writes wait, while the gate is closed, before reaching `base`: lets a test hold a
/// write inside the storage.
final class GatedWritesBlobStore: BlobStore {
    let base: any BlobStore
    private let state = Mutex<(closed: Bool, held: Int)>((false, 0))

    init(_ base: any BlobStore) { self.base = base }

    func close() { state.withLock { $0.closed = true } }
    func open() { state.withLock { $0.closed = false } }

    /// Waits until `count` writes are held at the gate.
    func waitUntilHeld(_ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while state.withLock({ $0.held }) < count {
            guard ContinuousClock.now < deadline else { throw ConformanceFailure("no write reached the storage within 30 s") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    private func pass() async throws {
        guard state.withLock({ state in
            if state.closed { state.held += 1 }
            return state.closed
        }) else { return }
        defer { state.withLock { $0.held -= 1 } }
        while state.withLock({ $0.closed }) { try await Task.sleep(for: .milliseconds(5)) }
    }

    var maximumBlobSize: Int64? { base.maximumBlobSize }
    func findMissing(_ digests: [Digest]) async throws -> [Digest] { try await base.findMissing(digests) }
    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await base.read(digest, offset: offset, limit: limit)
    }
    func write(_ digest: Digest, body: BlobBody) async throws {
        try await pass()
        try await base.write(digest, body: body)
    }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }
    func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        do { try await pass() } catch { return blobs.map { _ in .failure(StrataError.from(error)) } }
        return await base.writeBatch(blobs)
    }
}

/// A task whose completion a test can look at without waiting for it.
final class Finished: Sendable {
    private final class Flag: Sendable {
        let done = Atomic<Bool>(false)
    }

    private let flag: Flag
    private let task: Task<Void, any Error>

    init(_ work: @escaping @Sendable () async throws -> Void) {
        let flag = Flag()
        self.flag = flag
        task = Task {
            defer { flag.done.store(true, ordering: .releasing) }
            try await work()
        }
    }

    var isDone: Bool { flag.done.load(ordering: .acquiring) }
    func value() async throws { try await task.value }
}
