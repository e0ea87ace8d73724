import Foundation
import StrataCore
@testable import StrataSQL
import StrataStorage
import StrataTestSupport
import Testing

/// Rows damaged in PostgreSQL behind Strata's back, read through the `VerifyingBlobStore` the
/// configuration puts around `!sql-storage`.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLCorruptionTests {
    static func verified(_ connection: SQLConnection) -> VerifyingBlobStore<SQLBlobStore> {
        VerifyingBlobStore(SQLBlobStore(connection: connection), name: "SQL storage (test)")
    }

    /// Runs `change` (an SQL expression of the row's `data`) on the row of `blob`.
    static func damage(_ connection: SQLConnection, _ blob: Blob, data change: String) async throws {
        try await SQLTestDatabase.execute(connection, """
            UPDATE strata_blobs SET data = \(change)
            WHERE hash = '\\x\(blob.digest.hash)' AND size = \(blob.digest.sizeBytes)
            """)
    }

    /// Same size, one byte changed: only the hash can tell.
    static let garbage = "set_byte(data, 1000, (get_byte(data, 1000) + 1) % 256)"
    /// The row cut to its first 1,000 bytes (served as OK with 1,000 bytes before).
    static let cut = "substring(data FROM 1 FOR 1000)"

    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await SQLTestDatabase.with { connection, _ in try await check.run(on: Self.verified(connection)) }
    }

    @Test func sameSizeGarbageRowIsNeverServed() async throws {
        try await SQLTestDatabase.with { connection, _ in
            // Over 2 MiB: the streamed read spans chunks of the row.
            try await CorruptionScenario.run(on: Self.verified(connection), size: (2 << 20) + 4321) { blob in
                try await Self.damage(connection, blob, data: Self.garbage)
            }
        }
    }

    @Test func rowCutShortIsNeverServed() async throws {
        try await SQLTestDatabase.with { connection, _ in
            try await CorruptionScenario.run(on: Self.verified(connection), size: 100_000) { blob in
                try await Self.damage(connection, blob, data: Self.cut)
            }
        }
    }

    /// The bare store (no verification) still never serves a row of the wrong length, ranged or not,
    /// and reports it missing, so that an upload replaces it.
    @Test func rowOfTheWrongLengthIsMissingAndReplacedByAWrite() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let store = SQLBlobStore(connection: connection)
            let blob = Blob.random(size: 100_000)
            try await store.write(blob.digest, data: blob.data)
            try await Self.damage(connection, blob, data: Self.cut)
            try await expectError(.dataLoss, "a ranged read of a cut row") {
                _ = try await store.read(blob.digest, offset: 10, limit: 10).collect(limit: 100)
            }
            try expectFailure(await store.readBatch([blob.digest])[0], .dataLoss, "a batch read of a cut row")
            #expect(try await store.findMissing([blob.digest]) == [blob.digest])
            try await store.write(blob.digest, data: blob.data)
            #expect(try await store.readAll(blob.digest) == blob.data)
            try await Self.damage(connection, blob, data: Self.cut)
            #expect(await store.writeBatch([(blob.digest, blob.data)]).allSatisfy { (try? $0.get()) != nil })
            #expect(try await store.readAll(blob.digest) == blob.data)
        }
    }

    /// Under `!sql-index`, the entry goes with the corrupt copy: FindMissingBlobs (answered by the
    /// index) reports the blob missing.
    @Test func indexDropsTheEntryOfACorruptCopy() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(backingStore: Self.verified(connection), connection: connection)
            try await CorruptionScenario.run(on: index, size: 100_000) { blob in
                try await Self.damage(connection, blob, data: Self.garbage)
            }
        }
    }
}
