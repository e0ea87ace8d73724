import Foundation
import StrataCore
import StrataS3
import StrataStorage
import StrataTestSupport
import Testing

/// `!s3-storage` with `compression: zstd`: blobs as `{key}.zst` objects, single PUT or multipart.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_S3")))
struct S3CompressionTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        let fixture = try await S3Fixture.make()
        try await check.run(on: try fixture.store(hashPrefixSize: 2, options: S3BlobStore.Options(compressionLevel: 3)))
    }

    @Test func storesZstdObjectsSmallAndMultipartAndReadsThemBack() async throws {
        let fixture = try await S3Fixture.make()
        let options = S3BlobStore.Options(singlePutLimit: 1 << 20, partSize: 5 << 20, readChunkSize: 256 << 10, compressionLevel: 3)
        let store = try fixture.store(options: options)
        for blob in [compressibleBlob(size: 5000), compressibleBlob(size: 30 << 20), Blob.random(size: 12 << 20)] {
            try await store.write(blob.digest, data: blob.data)
            let key = "\(blob.digest.hash)_\(blob.digest.sizeBytes)"
            #expect(try await fixture.client.headObject(bucket: fixture.bucket, key: key) == nil)
            let stored = try #require(try await fixture.client.headObject(bucket: fixture.bucket, key: key + ".zst"))
            if blob.data.count == 30 << 20 { #expect(stored < Int64(blob.data.count / 3)) }
            #expect(try await store.findMissing([blob.digest]).isEmpty)
            #expect(try await store.read(blob.digest, offset: 0, limit: nil).collect(limit: 1 << 30) == blob.data)
            let offset = Int64(blob.data.count / 3)
            #expect(try await store.read(blob.digest, offset: offset, limit: 1000).collect(limit: 1 << 30) == blob.data[Int(offset)..<Int(offset) + 1000])
            let frame = try await #require(try await store.readZstd(blob.digest)).collect(limit: 1 << 30)
            #expect(Int64(frame.count) == stored)
        }
        var listed = 0
        try await store.forEachBlobPage(pageSize: 100) { listed += $0.count }
        #expect(listed == 3)
    }

    @Test func uncompressedObjectsStayReadableAndCompressedOnesAreNeverTakenForThem() async throws {
        let fixture = try await S3Fixture.make()
        let plainStore = try fixture.store()
        let zstdStore = try fixture.store(options: S3BlobStore.Options(compressionLevel: 3))
        let old = compressibleBlob(size: 100_000, seed: 1), new = compressibleBlob(size: 100_000, seed: 2)
        try await plainStore.write(old.digest, data: old.data)
        try await zstdStore.write(new.digest, data: new.data)
        #expect(try await zstdStore.findMissing([old.digest, new.digest]).isEmpty)
        #expect(try await zstdStore.readAll(old.digest) == old.data)
        #expect(try await zstdStore.readZstd(old.digest) == nil)
        // Compression off: the compressed object is not seen (clients upload the blob again).
        #expect(try await plainStore.findMissing([new.digest]) == [new.digest])
        await #expect(throws: StrataError.self) { _ = try await plainStore.readAll(new.digest) }
        try await zstdStore.delete([new.digest])
        #expect(try await zstdStore.findMissing([new.digest]) == [new.digest])
    }

    @Test func aDamagedFrameIsNeverServed() async throws {
        let fixture = try await S3Fixture.make()
        let store = VerifyingBlobStore(try fixture.store(options: S3BlobStore.Options(compressionLevel: 3)), name: "S3 storage")
        let blob = compressibleBlob(size: 200_000)
        try await store.write(blob.digest, data: blob.data)
        let key = "\(blob.digest.hash)_\(blob.digest.sizeBytes).zst"
        var frame = try await fixture.client.getObject(bucket: fixture.bucket, key: key).data
        frame[frame.count / 2] ^= 0x08
        try await fixture.client.putObject(bucket: fixture.bucket, key: key, data: frame)
        await #expect(throws: StrataError.self) { _ = try await store.readAll(blob.digest) }
        #expect(try await store.findMissing([blob.digest]) == [blob.digest])
    }
}
