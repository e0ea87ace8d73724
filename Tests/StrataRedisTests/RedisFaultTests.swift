import Foundation
import StrataCore
@testable import StrataRedis
import StrataStorage
import StrataTestSupport
import Testing

/// Redis going away or hanging while blobs are read and looked up.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct RedisFaultTests {
    /// A Redis restart used to fail BatchReadBlobs and GetTree for blobs that are present: refreshing
    /// their access times failed the reads. The reads now answer their bytes.
    @Test func readsOfPresentBlobsSurviveRedisGoingAway() async throws {
        let redis = try await PrivateRedis()
        var configuration = redis.configuration
        configuration.timeout = .seconds(2)
        let client = RedisClient(configuration)
        let index = RedisIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), client: client,
                               prefix: TestServices.uniqueName("fault") + ":")
        let blobs = (0..<3).map { _ in Blob.random(size: 200) }
        for blob in blobs { try await index.write(blob.digest, data: blob.data) }

        redis.kill()
        let answers = await index.readBatch(blobs.map(\.digest))
        for (blob, answer) in zip(blobs, answers) {
            #expect((try? answer.get()) == blob.data, "batch read with Redis down: \(answer)")
        }
        #expect(try await index.readAll(blobs[0].digest) == blobs[0].data)
        #expect(try await index.read(blobs[1].digest, offset: 50, limit: 10).collect(limit: 10) == blobs[1].data[50..<60])
        // What needs the index still says it cannot be answered.
        await #expect {
            _ = try await index.findMissing([blobs[0].digest])
        } throws: { error in
            (error as? StrataError)?.code == .unavailable
        }
        await client.shutdown()
    }

    /// A Redis that accepts connections and never answers is UNAVAILABLE within the command timeout
    /// (shortened to the client's deadline), and once it answers again, calls succeed at once on new
    /// connections rather than timing out once more on each silent pooled one.
    @Test(.timeLimit(.minutes(1)))
    func hungRedisIsUnavailableQuicklyAndRecovers() async throws {
        var configuration = try sharedRedisConfiguration()
        let proxy = try FaultProxy(targetPort: configuration.port)
        defer { proxy.stop() }
        configuration.host = "127.0.0.1"
        configuration.port = proxy.port
        configuration.timeout = .seconds(5)
        configuration.poolSize = 4
        let client = RedisClient(configuration)
        // Several pooled connections through the proxy.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 { group.addTask { _ = try await client.send("PING") } }
            try await group.waitForAll()
        }

        proxy.hang()
        let (error, elapsed) = await timedError { _ = try await client.send("PING") }
        #expect(error?.code == .unavailable, "\(String(describing: error))")
        #expect(elapsed < .seconds(20), "PING to a hung Redis took \(elapsed)")
        let (deadlineError, deadlineElapsed) = await timedError {
            _ = try await RequestDeadline.withDeadline(.now + .milliseconds(500)) { try await client.send("PING") }
        }
        #expect(deadlineError?.code == .unavailable, "\(String(describing: deadlineError))")
        // Far below the 5 s command timeout.
        #expect(deadlineElapsed < .seconds(4), "a 0.5 s deadline took \(deadlineElapsed)")

        proxy.forward()
        for _ in 0..<4 {
            let (recoveredError, recoveredElapsed) = await timedError { _ = try await client.send("PING") }
            #expect(recoveredError == nil, "\(String(describing: recoveredError))")
            #expect(recoveredElapsed < .seconds(4), "a PING after recovery took \(recoveredElapsed)")
        }
        await client.shutdown()
    }
}
