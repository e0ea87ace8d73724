import Foundation
import StrataCore
@testable import StrataSQL
import StrataStorage
import StrataTestSupport
import Testing

/// `!sql-storage` with `compression: zstd`: rows holding a zstd frame, either kind read whatever the
/// setting, damaged frames never served.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLCompressionTests {
    static func compressed(_ connection: SQLConnection) -> SQLBlobStore {
        SQLBlobStore(connection: connection, compressionLevel: 3)
    }

    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await SQLTestDatabase.with { connection, _ in
            try await check.run(on: VerifyingBlobStore(Self.compressed(connection), name: "SQL storage (test)"))
        }
    }

    @Test func rowsHoldFramesAndBothKindsAreRead() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let plain = SQLBlobStore(connection: connection), packed = Self.compressed(connection)
            let text = Data(String(repeating: "alpha beta gamma delta epsilon\n", count: 100_000).utf8)
            let old = Blob(text), new = Blob(text + Data("!".utf8))
            try await plain.write(old.digest, data: old.data)
            try await packed.write(new.digest, data: new.data)
            let lengths = try await connection.withConnection("lengths") { postgres in
                var lengths: [Int64: (Int64, Bool)] = [:]
                let rows = try await postgres.query("SELECT size, octet_length(data)::int8, compressed FROM strata_blobs", logger: connection.logger)
                for try await (size, length, compressed) in rows.decode((Int64, Int64, Bool).self) { lengths[size] = (length, compressed) }
                return lengths
            }
            #expect(lengths[old.digest.sizeBytes]! == (old.digest.sizeBytes, false))
            #expect(lengths[new.digest.sizeBytes]!.1 && lengths[new.digest.sizeBytes]!.0 < new.digest.sizeBytes / 50)
            for store in [plain, packed] {
                #expect(try await store.findMissing([old.digest, new.digest]).isEmpty)
                #expect(try await store.readAll(old.digest) == old.data)
                #expect(try await store.readAll(new.digest) == new.data)
                #expect(try await store.read(new.digest, offset: 1_000_000, limit: 5000).collect(limit: 10_000) == new.data[1_000_000..<1_005_000])
                #expect(try await store.readBatch([old.digest, new.digest]).map { try $0.get() } == [old.data, new.data])
                #expect(try await store.readZstd(old.digest) == nil)
                #expect(try await store.readZstd(new.digest) != nil)
            }
            // A batch write stores frames too.
            let batch = [Blob(text + Data("?".utf8)), Blob(text + Data("#".utf8))]
            #expect(await packed.writeBatch(batch.map { ($0.digest, $0.data) }).allSatisfy { (try? $0.get()) != nil })
            #expect(try await plain.readBatch(batch.map(\.digest)).map { try $0.get() } == batch.map(\.data))
        }
    }

    @Test func damagedFramesAreNeverServed() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let store = VerifyingBlobStore(Self.compressed(connection), name: "SQL storage (test)")
            try await CorruptionScenario.run(on: store, size: (2 << 20) + 4321) { blob in
                try await SQLCorruptionTests.damage(connection, blob, data: SQLCorruptionTests.garbage)
            }
            try await CorruptionScenario.run(on: store, size: 100_000) { blob in
                try await SQLCorruptionTests.damage(connection, blob, data: SQLCorruptionTests.cut)
            }
        }
    }
}
