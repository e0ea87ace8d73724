import StrataCore
import StrataS3
import StrataTestSupport
import Testing

@Suite(.enabled(if: TestServices.available("STRATA_TEST_S3")))
struct S3ReadinessTests {
    /// HEAD of the bucket answers for an existing bucket; a missing one and refused credentials are
    /// reported saying which.
    @Test func headOfTheBucket() async throws {
        let fixture = try await S3Fixture.make("ready")
        try await fixture.store().checkReadiness()

        let missing = try S3BlobStore(
            client: fixture.client, naming: S3ObjectNaming(bucket: try S3BucketTemplate(fixture.bucket + "-missing")))
        let absent = await #expect(throws: StrataError.self) { try await missing.checkReadiness() }
        #expect(absent?.message.contains("\(fixture.bucket)-missing\" does not exist") == true, "\(absent?.message ?? "")")

        let refused = S3BlobStore(
            client: fixture.clientWithSecret("wrong"), naming: S3ObjectNaming(bucket: try S3BucketTemplate(fixture.bucket)))
        let denied = await #expect(throws: StrataError.self) { try await refused.checkReadiness() }
        #expect(denied?.message.contains("refused HEAD of bucket") == true, "\(denied?.message ?? "")")
    }
}
