import Foundation
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

/// A disk store in a temporary folder, wrapped as the configuration wraps it.
struct VerifiedDisk {
    let root: String
    let disk: DiskBlobStore
    let store: VerifyingBlobStore<DiskBlobStore>

    init(verifyReads: Bool = true) throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-verify-\(UUID().uuidString)").path
        disk = try DiskBlobStore(path: root, sync: false)
        store = VerifyingBlobStore(disk, name: "disk storage \(root)", verifyReads: verifyReads)
    }

    func file(_ digest: Digest) -> String { "\(root)/cas/\(digest.hash.prefix(2))/\(digest.hash)_\(digest.sizeBytes)" }

    /// Writes `data` as the stored file of `blob`, in place (as a bad disk would change it).
    func overwrite(_ blob: Blob, with data: Data) throws {
        try data.write(to: URL(fileURLWithPath: file(blob.digest)))
    }

    func flipByte(_ blob: Blob) throws { try overwrite(blob, with: CorruptionScenario.flipped(blob.data)) }

    func storedBytes(_ blob: Blob) -> Data? { FileManager.default.contents(atPath: file(blob.digest)) }

    func remove() { try? FileManager.default.removeItem(atPath: root) }
}

@Suite struct VerifyingBlobStoreTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        let disk = try VerifiedDisk()
        defer { disk.remove() }
        try await check.run(on: disk.store)
    }

    @Test func flippedByteInADiskFileIsNeverServed() async throws {
        let disk = try VerifiedDisk()
        defer { disk.remove() }
        try await CorruptionScenario.run(on: disk.store, size: 3 << 20 + 123) { try disk.flipByte($0) }
    }

    @Test func truncatedDiskFileIsNeverServed() async throws {
        let disk = try VerifiedDisk()
        defer { disk.remove() }
        try await CorruptionScenario.run(on: disk.store, size: 100_000) { try disk.overwrite($0, with: $0.data.prefix(1000)) }
    }

    /// `verify-reads: false` skips the hash, never the length: a short file is still refused and removed.
    @Test func unhashedReadsStillCheckTheLength() async throws {
        let disk = try VerifiedDisk(verifyReads: false)
        defer { disk.remove() }
        let blob = Blob.random(size: 5000)
        try await disk.store.write(blob.digest, data: blob.data)
        try disk.overwrite(blob, with: blob.data.prefix(1000))
        try await expectError(.notFound, "reading a short file") { _ = try await disk.store.readAll(blob.digest) }
        #expect(disk.storedBytes(blob) == nil)
        try disk.overwrite(blob, with: blob.data.prefix(1000))
        try expectFailure(await disk.store.readBatch([blob.digest])[0], .notFound, "batch-reading a short file")
        // The hash is the option's business: a flipped byte is served as stored.
        try await disk.store.write(blob.digest, data: blob.data)
        try disk.flipByte(blob)
        #expect(try await disk.store.readAll(blob.digest) == CorruptionScenario.flipped(blob.data))
    }

    /// A ranged read cannot be hashed, but it checks the stored length.
    @Test func rangedReadsCheckTheStoredLength() async throws {
        let disk = try VerifiedDisk()
        defer { disk.remove() }
        let blob = Blob.random(size: 5000)
        try await disk.store.write(blob.digest, data: blob.data)
        #expect(try await disk.store.read(blob.digest, offset: 10, limit: 20).collect(limit: 100) == blob.data[10..<30])
        try disk.overwrite(blob, with: blob.data.prefix(4000))
        try await expectError(.notFound, "a ranged read of a short file") {
            _ = try await disk.store.read(blob.digest, offset: 10, limit: 20).collect(limit: 100)
        }
        #expect(try await disk.store.findMissing([blob.digest]) == [blob.digest])
    }

    @Test func corruptCacheCopyIsRepairedFromTheFallback() async throws {
        let cache = try VerifiedDisk(), fallback = try VerifiedDisk()
        defer { cache.remove(); fallback.remove() }
        let store = WithCacheBlobStore(cache: cache.store, fallback: fallback.store)
        let blob = Blob.random(size: 50_000)
        try await store.write(blob.digest, data: blob.data)
        #expect(cache.storedBytes(blob) == blob.data)

        // A streamed read of a one-chunk blob: the bad copy fails before any byte, the fallback serves.
        try cache.flipByte(blob)
        #expect(try await store.readAll(blob.digest) == blob.data)
        #expect(cache.storedBytes(blob) == blob.data)

        // A batch read: the same, item by item.
        try cache.flipByte(blob)
        #expect(try await store.readBatch([blob.digest])[0].get() == blob.data)
        #expect(cache.storedBytes(blob) == blob.data)
        #expect(try await store.findMissing([blob.digest]).isEmpty)
    }

    @Test func corruptReplicaIsRepairedFromAnother() async throws {
        let first = try VerifiedDisk(), second = try VerifiedDisk()
        defer { first.remove(); second.remove() }
        let store = ReplicatedBlobStore(replicas: [first.store, second.store])
        let blob = Blob.random(size: 50_000)
        try await store.write(blob.digest, data: blob.data)

        try first.flipByte(blob)
        #expect(try await store.readAll(blob.digest) == blob.data)
        try await waitForRepairs(store)
        #expect(first.storedBytes(blob) == blob.data)

        try first.flipByte(blob)
        #expect(try await store.readBatch([blob.digest])[0].get() == blob.data)
        try await waitForRepairs(store)
        #expect(first.storedBytes(blob) == blob.data)

        // Both copies bad: not served, and reported missing so that a client uploads it again.
        try first.flipByte(blob)
        try second.flipByte(blob)
        try await expectError(.notFound, "reading a blob corrupt in every replica") { _ = try await store.readAll(blob.digest) }
        #expect(try await store.findMissing([blob.digest]) == [blob.digest])
        try await store.write(blob.digest, data: blob.data)
        #expect(first.storedBytes(blob) == blob.data && second.storedBytes(blob) == blob.data)
    }

    private func waitForRepairs(_ store: ReplicatedBlobStore) async throws {
        // Repairs run in the background; bounded generously (they take milliseconds).
        for _ in 0..<1000 where await store.repairsInFlight() > 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(await store.repairsInFlight() == 0)
    }
}
