import StrataCore
import StrataRedis
import StrataTestSupport
import Testing

@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct RedisReadinessTests {
    @Test func aRunningRedisIsReady() async throws {
        try await withSharedRedis { client in try await client.checkReadiness() }
    }

    /// Nothing listening: not ready, naming the endpoint.
    @Test func aRedisThatDoesNotAnswerIsNotReady() async throws {
        let port = try freeLoopbackPort()
        let client = RedisClient(RedisConfiguration(host: "127.0.0.1", port: port, poolSize: 1))
        // A generous timeout: the client's own refusal (after its retries, slow on a loaded machine) must
        // be what is reported, not the readiness timeout.
        let results = await Readiness(
            backends: [.init(backend: client, name: "!redis-connection", location: "r.yml:2: connections[0]")],
            timeout: .seconds(60)).check()
        await client.shutdown()
        let problem = try #require(results.first?.problem)
        #expect(problem.contains("127.0.0.1:\(port)"), "\(problem)")
    }
}
