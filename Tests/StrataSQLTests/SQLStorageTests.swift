import Foundation
import StrataCore
@testable import StrataSQL
import StrataStorage
import StrataTestSupport
import Testing

@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLBlobStoreTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await SQLTestDatabase.with { connection, _ in
            try await check.run(on: SQLBlobStore(connection: connection))
        }
    }

    /// SHA-256 rows keep their 32 hash bytes; other functions' rows carry the function after the hash,
    /// and the listing (janitor, cleanup) reads every function's back.
    @Test func listsBlobsOfEveryFunction() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let store = SQLBlobStore(connection: connection)
            let blobs = DigestFunction.supported.map { Blob.random(size: 30, function: $0) }
            for blob in blobs { try await store.write(blob.digest, data: blob.data) }
            var listed: [StoredBlob] = []
            try await store.forEachBlobPage(pageSize: 2) { listed += $0 }
            #expect(listed.count == blobs.count && Set(listed.map(\.digest)) == Set(blobs.map(\.digest)))
            #expect(SQLDigestKeys.hashBytes(blobs[0].digest).readableBytes == 32)
            #expect(Array(SQLDigestKeys.hashBytes(try #require(blobs.last).digest).readableBytesView).last == 9)
        }
    }

    @Test func refusesBlobsAboveItsLimit() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let store = SQLBlobStore(connection: connection, maximumBlobSize: 1000)
            let blob = Blob.random(size: 1001)
            try await expectError(.resourceExhausted, "writing a blob above the limit") {
                try await store.write(blob.digest, data: blob.data)
            }
            try expectFailure(await store.writeBatch([(blob.digest, blob.data)])[0], .resourceExhausted, "batch-writing a blob above the limit")
            #expect(try await store.findMissing([blob.digest]) == [blob.digest])
            #expect(store.maximumBlobSize == 1000)
        }
    }

    @Test func readsThroughTheReadOnlyConnection() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            let store = SQLBlobStore(connection: connection, readOnlyConnection: readOnly)
            let blob = Blob.random(size: 5 << 20)
            try await store.write(blob.digest, data: blob.data)
            #expect(try await store.findMissing([blob.digest]).isEmpty)
            #expect(try await store.readAll(blob.digest) == blob.data)
            // The read-only session really is read-only: a store writing through it fails, naming the database.
            let wrong = SQLBlobStore(connection: readOnly)
            let other = Blob.random(size: 10)
            await #expect(throws: StrataError.self) { try await wrong.write(other.digest, data: other.data) }
        }
    }

    @Test func largeReadsComeInBoundedChunks() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let store = SQLBlobStore(connection: connection)
            let blob = Blob.random(size: 9 << 20)
            try await store.write(blob.digest, data: blob.data)
            var chunks: [Int] = []
            var received = Data()
            for try await chunk in try await store.read(blob.digest, offset: 100, limit: nil) {
                chunks.append(chunk.count)
                received.append(chunk)
            }
            #expect(received == blob.data.dropFirst(100))
            #expect(chunks.allSatisfy { $0 <= Int(SQLBlobStore.readChunkSize) } && chunks.count == 5)
        }
    }
}

@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLIndexConformanceTests {
    @Test(arguments: BlobStoreConformance.cases)
    func overLRU(_ check: BlobStoreConformance) async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(backingStore: LRUBlobStore(capacityBytes: 256 << 20), connection: connection, windowSize: 7)
            try await check.run(on: index)
        }
    }

    @Test(arguments: BlobStoreConformance.cases)
    func overSQLStorageWithInlining(_ check: BlobStoreConformance) async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(
                backingStore: SQLBlobStore(connection: connection), connection: connection, maxInlineBlobSize: 1024)
            try await check.run(on: index)
        }
    }
}
