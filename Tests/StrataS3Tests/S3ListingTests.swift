import Foundation
import StrataCore
@testable import StrataS3
import StrataStorage
import StrataTestSupport
import Testing

/// Listing an S3 storage's blobs, for the janitor (ListObjectsV2, paged by continuation token).
@Suite(.enabled(if: TestServices.available("STRATA_TEST_S3")))
struct S3ListingTests {
    func listed(_ store: S3BlobStore, pageSize: Int = 1000) async throws -> [StoredBlob] {
        var all: [StoredBlob] = []
        try await store.forEachBlobPage(pageSize: pageSize) { all += $0 }
        return all
    }

    @Test func listsBlobsUnderBuildGridKeysSkippingForeignObjects() async throws {
        let fixture = try await S3Fixture.make()
        let store = try fixture.store(hashPrefixSize: 2, pathPrefix: "cas")
        let blobs = (0..<5).map { _ in Blob.random(size: 300) }
        for blob in blobs { try await store.write(blob.digest, data: blob.data) }
        // Not blobs of this storage: outside the prefix, not a digest, a size that disagrees with the name.
        try await fixture.client.putObject(bucket: fixture.bucket, key: "other/\(blobs[0].digest.hash)_300", data: blobs[0].data)
        try await fixture.client.putObject(bucket: fixture.bucket, key: "cas/ab/notahash_3", data: Data("abc".utf8))
        let liar = Blob.random(size: 10)
        try await fixture.client.putObject(
            bucket: fixture.bucket, key: "cas/\(liar.digest.hash.prefix(2))/\(liar.digest.hash.dropFirst(2))_11", data: liar.data)

        let found = try await listed(store)
        #expect(Set(found.map(\.digest)) == Set(blobs.map(\.digest)))
        #expect(found.count == 5)
        #expect(found.allSatisfy { abs($0.modified.timeIntervalSinceNow) < 600 })
    }

    /// SHA-256 keys as BuildGrid names them; other functions under `{function}/` after the path prefix;
    /// the listing reads both back.
    @Test func listsBlobsOfEveryFunction() async throws {
        let fixture = try await S3Fixture.make()
        let store = try fixture.store(hashPrefixSize: 2, pathPrefix: "cas")
        let blobs = DigestFunction.supported.map { Blob.random(size: 30, function: $0) }
        for blob in blobs { try await store.write(blob.digest, data: blob.data) }
        for blob in blobs {
            let hash = blob.digest.hash
            let namespace = blob.digest.function == .sha256 ? "" : "\(blob.digest.function.name)/"
            let key = store.naming.key(for: blob.digest)
            #expect(key == "cas/\(namespace)\(hash.prefix(2))/\(hash.dropFirst(2))_30")
            #expect(store.naming.digest(forKey: key) == blob.digest)
        }
        let found = try await listed(store)
        #expect(found.count == blobs.count && Set(found.map(\.digest)) == Set(blobs.map(\.digest)))
    }

    @Test func pagesThroughMoreThanOneListing() async throws {
        let fixture = try await S3Fixture.make()
        let store = try fixture.store()
        let blobs = (0..<1005).map { _ in Blob.random(size: 8) }
        for result in await store.writeBatch(blobs.map { ($0.digest, $0.data) }) { try result.get() }
        var pages = 0
        var found: [StoredBlob] = []
        try await store.forEachBlobPage(pageSize: 400) { page in
            pages += 1
            found += page
        }
        #expect(pages >= 2)
        #expect(Set(found.map(\.digest)) == Set(blobs.map(\.digest)))
    }

    @Test func templatedBucketsAreListedOneByOne() async throws {
        let fixture = try await S3Fixture.make()
        let base = fixture.bucket
        for character in "0123456789abcdef" { try await fixture.client.createBucket("\(base)-\(character)") }
        let store = S3BlobStore(client: fixture.client, naming: S3ObjectNaming(bucket: try S3BucketTemplate("\(base)-{digest[0]}")))
        let blobs = (0..<8).map { _ in Blob.random(size: 50) }
        for blob in blobs { try await store.write(blob.digest, data: blob.data) }
        #expect(try await Set(listed(store).map(\.digest)) == Set(blobs.map(\.digest)))

        let perHash = S3BlobStore(client: fixture.client, naming: S3ObjectNaming(bucket: try S3BucketTemplate("b-{digest}")))
        await #expect(throws: StrataError.self) { try await listed(perHash) }
    }
}

@Suite struct S3TimestampTests {
    /// S3 and its look-alikes write LastModified with or without fractional seconds.
    @Test func lastModifiedWithAndWithoutFractions() throws {
        let whole = try #require(S3Client.parseTimestamp("2026-11-23T20:45:01Z"))
        let fractional = try #require(S3Client.parseTimestamp("2026-11-23T20:45:01.250Z"))
        #expect(whole.timeIntervalSince1970 == 1_795_466_701)
        #expect(abs(fractional.timeIntervalSince(whole) - 0.25) < 0.001)
        #expect(S3Client.parseTimestamp("yesterday") == nil)
    }
}
