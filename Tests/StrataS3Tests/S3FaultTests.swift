import Foundation
import NIOPosix
import StrataCore
import StrataS3
import StrataStorage
import StrataTestSupport
import Testing

/// S3 behind a `FaultProxy`: hanging (connections accepted, nothing answered), recovering, and
/// answering 403 for missing keys as AWS does without `s3:ListBucket`.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_S3")))
struct S3FaultTests {
    /// The test server's port (moto on 127.0.0.1).
    static func s3Port() throws -> Int {
        guard let s3 = TestServices.s3 else { throw MissingServiceError("STRATA_TEST_S3") }
        guard let port = URLComponents(string: s3.endpoint)?.port else {
            throw MissingServiceError("STRATA_TEST_S3 names no port: \(s3.endpoint)")
        }
        return port
    }

    /// A client of the test server through `proxy`, on threads of its own (so that the time measured
    /// is this client's, not a queue behind other tests' transfers).
    static func client(through proxy: FaultProxy, threads: NIOThreadPool, stallTimeoutSeconds: Double = 10) throws -> S3Client {
        guard let s3 = TestServices.s3 else { throw MissingServiceError("STRATA_TEST_S3") }
        return S3Client(S3ClientConfiguration(
            endpoint: "http://127.0.0.1:\(proxy.port)", region: "us-east-1",
            credentials: S3Credentials(accessKey: s3.accessKey, secretKey: s3.secretKey),
            stallTimeoutSeconds: stallTimeoutSeconds, retry: S3RetryPolicy(budgetSeconds: 3)), threadPool: threads)
    }

    /// Hung S3 used to take 280 s to answer (retries × 120 s transfer timeouts). Now reads and writes
    /// answer UNAVAILABLE after the stall timeout, or sooner at the client's deadline; once S3 answers
    /// again, the next calls succeed at once on new connections (the silent ones are not reused).
    @Test(.timeLimit(.minutes(2)))
    func hungS3IsUnavailableWithinSecondsAndRecovers() async throws {
        let fixture = try await S3Fixture.make()
        let proxy = try FaultProxy(targetPort: try Self.s3Port())
        defer { proxy.stop() }
        let threads = NIOThreadPool(numberOfThreads: 4)
        threads.start()
        defer { threads.shutdownGracefully { _ in } }
        let client = try Self.client(through: proxy, threads: threads, stallTimeoutSeconds: 2)
        let store = S3BlobStore(client: client, naming: S3ObjectNaming(bucket: try S3BucketTemplate(fixture.bucket)))
        let stored = Blob.random(size: 5000)
        try await store.write(stored.digest, data: stored.data)
        // Kept-alive connections through the proxy, for the hang to catch.
        #expect(try await store.readAll(stored.digest) == stored.data)

        proxy.hang()
        let blob = Blob.random(size: 4000)
        let operations: [(String, @Sendable () async throws -> Void)] = [
            ("read", { _ = try await store.readAll(stored.digest) }),
            ("write", { try await store.write(blob.digest, data: blob.data) }),
            ("findMissing", { _ = try await store.findMissing([stored.digest]) }),
        ]
        for (name, operation) in operations {
            // No client deadline: 2 s stall timeouts, retried within the 3 s budget only.
            let (error, elapsed) = await timedError(operation)
            #expect(error?.code == .unavailable, "\(name) on a hung S3: \(String(describing: error))")
            // A liveness bound with a wide margin for a loaded machine: the old answer took 280 s.
            #expect(elapsed < .seconds(25), "\(name) on a hung S3 took \(elapsed)")
        }
        // A client deadline of 1 s bounds the call below the stall timeout.
        let (error, elapsed) = await timedError {
            try await RequestDeadline.withDeadline(.now + .seconds(1)) { _ = try await store.readAll(stored.digest) }
        }
        #expect(error?.code == .unavailable, "\(String(describing: error))")
        #expect(elapsed < .seconds(10), "a read with a 1 s deadline took \(elapsed)")

        proxy.forward()
        let (readError, readElapsed) = await timedError {
            let data = try await store.readAll(stored.digest)
            #expect(data == stored.data)
        }
        #expect(readError == nil, "\(String(describing: readError))")
        // Well below the 2 s stall a dead connection would cost each call.
        #expect(readElapsed < .seconds(2), "the first read after recovery took \(readElapsed)")
        try await store.write(blob.digest, data: blob.data)
        #expect(try await store.findMissing([blob.digest, stored.digest]).isEmpty)
    }

    /// Without `s3:ListBucket`, AWS answers a HEAD of a missing key with 403: that is a missing blob
    /// (with a warning), not an INTERNAL error failing every FindMissingBlobs.
    @Test func forbiddenHeadOfAMissingKeyIsMissing() async throws {
        let fixture = try await S3Fixture.make()
        // Every 404 of the real server reaches the client as a 403, as from AWS without s3:ListBucket.
        let proxy = try FaultProxy(targetPort: try Self.s3Port()) { data in
            Data(String(decoding: data, as: UTF8.self).replacingOccurrences(of: "HTTP/1.1 404 ", with: "HTTP/1.1 403 ").utf8)
        }
        defer { proxy.stop() }
        let threads = NIOThreadPool(numberOfThreads: 2)
        threads.start()
        defer { threads.shutdownGracefully { _ in } }
        let client = try Self.client(through: proxy, threads: threads)
        let store = S3BlobStore(client: client, naming: S3ObjectNaming(bucket: try S3BucketTemplate(fixture.bucket)))
        let present = Blob.random(size: 300)
        let missing = Blob.random(size: 400)
        try await store.write(present.digest, data: present.data)
        #expect(try await store.findMissing([present.digest, missing.digest]) == [missing.digest])
        #expect(try await client.headObject(bucket: fixture.bucket, key: "no-such-key") == nil)
        // Refused credentials stay a configuration error.
        var wrong = client.configuration
        wrong.credentials.secretKey = "wrong"
        let refused = S3Client(wrong, threadPool: threads)
        await #expect {
            _ = try await refused.headObject(bucket: fixture.bucket, key: "no-such-key")
        } throws: { error in
            (error as? StrataError)?.code == .internal
        }
    }
}
