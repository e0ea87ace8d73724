import Foundation
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct ScrubberTests {
    @Test func removesOnlyTheCorruptBlobsOfADiskStore() async throws {
        let disk = try VerifiedDisk()
        defer { disk.remove() }
        let blobs = (0..<10).map { Blob.random(size: 1000 + $0 * 10_000) }
        for blob in blobs { try await disk.store.write(blob.digest, data: blob.data) }
        let corrupt = [blobs[1], blobs[4], blobs[9]]
        for blob in corrupt { try disk.flipByte(blob) }
        let total = blobs.reduce(0) { $0 + $1.digest.sizeBytes }
        let scrubber = Scrubber(storage: disk.disk, remover: disk.store, bytesPerSecond: nil)

        let dry = try await scrubber.runPass(dryRun: true)
        #expect((dry.checked, dry.bytes, dry.corrupt, dry.removed) == (10, total, 3, 0))
        #expect(try await disk.store.findMissing(blobs.map(\.digest)).isEmpty, "a dry run removed something")

        let pass = try await scrubber.runPass()
        #expect((pass.checked, pass.bytes, pass.corrupt, pass.removed) == (10, total, 3, 3))
        #expect(try await disk.store.findMissing(blobs.map(\.digest)) == corrupt.map(\.digest))
        for blob in blobs where !corrupt.contains(where: { $0.digest == blob.digest }) {
            #expect(disk.storedBytes(blob) == blob.data)
        }
        let again = try await scrubber.runPass()
        #expect((again.checked, again.corrupt, again.removed) == (7, 0, 0))
        #expect(pass.summary.contains("checked 10 blobs") && pass.summary.contains("3 corrupt, 3 removed"))
    }

    /// The rate limit makes a pass last at least bytes / rate (a lower bound: sleeping guarantees it).
    @Test func readsNoFasterThanItsRate() async throws {
        let disk = try VerifiedDisk()
        defer { disk.remove() }
        for _ in 0..<4 {
            let blob = Blob.random(size: 100_000)
            try await disk.store.write(blob.digest, data: blob.data)
        }
        let started = ContinuousClock.now
        let report = try await Scrubber(storage: disk.disk, remover: disk.store, bytesPerSecond: 1_000_000).runPass()
        #expect(report.bytes == 400_000)
        #expect(ContinuousClock.now - started >= .milliseconds(350))
    }

    @Test func stopsWhenAsked() async throws {
        let disk = try VerifiedDisk()
        defer { disk.remove() }
        for _ in 0..<3 {
            let blob = Blob.random(size: 100)
            try await disk.store.write(blob.digest, data: blob.data)
        }
        let report = try await Scrubber(storage: disk.disk, remover: disk.store, bytesPerSecond: nil).runPass { true }
        #expect(report.stoppedByRequest && report.checked == 0)
    }
}
