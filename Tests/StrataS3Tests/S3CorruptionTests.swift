import Foundation
import StrataCore
import StrataS3
import StrataStorage
import StrataTestSupport
import Testing

/// Objects overwritten in S3 behind Strata's back, read through the `VerifyingBlobStore` the
/// configuration puts around `!s3-storage`. Small blobs, small read chunks: streamed reads span chunks.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_S3")))
struct S3CorruptionTests {
    /// `singlePutLimit` below the blob's size: its write goes multipart and is skipped when the blob
    /// looks stored, so the verifying store must check the stored copy first.
    static func verified(_ fixture: S3Fixture, singlePutLimit: Int = 8 << 20) throws -> VerifyingBlobStore<S3BlobStore> {
        let store = try fixture.store(options: S3BlobStore.Options(singlePutLimit: singlePutLimit, readChunkSize: 32 << 10))
        return VerifyingBlobStore(store, name: "S3 storage (test)") { $0.sizeBytes > Int64(singlePutLimit) }
    }

    static func replace(_ fixture: S3Fixture, _ blob: Blob, with data: Data) async throws {
        try await fixture.client.putObject(bucket: fixture.bucket, key: blob.digest.hash + "_\(blob.digest.sizeBytes)", data: data)
    }

    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await check.run(on: try Self.verified(try await S3Fixture.make(), singlePutLimit: 64 << 10))
    }

    @Test func sameSizeGarbageObjectIsNeverServed() async throws {
        let fixture = try await S3Fixture.make()
        try await CorruptionScenario.run(on: try Self.verified(fixture), size: 100_000) { blob in
            try await Self.replace(fixture, blob, with: CorruptionScenario.flipped(blob.data))
        }
    }

    @Test func sameSizeGarbageObjectOfAMultipartBlobIsNeverServed() async throws {
        let fixture = try await S3Fixture.make()
        try await CorruptionScenario.run(on: try Self.verified(fixture, singlePutLimit: 64 << 10), size: 100_000) { blob in
            try await Self.replace(fixture, blob, with: CorruptionScenario.flipped(blob.data))
        }
    }

    @Test func shortObjectIsNeverServed() async throws {
        let fixture = try await S3Fixture.make()
        try await CorruptionScenario.run(on: try Self.verified(fixture), size: 100_000) { blob in
            try await Self.replace(fixture, blob, with: blob.data.prefix(1000))
        }
    }
}
