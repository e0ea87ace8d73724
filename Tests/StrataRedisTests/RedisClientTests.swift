import Foundation
import StrataCore
import StrataRedis
import StrataStorage
import StrataTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS")))
struct RedisClientTests {
    @Test func pipelinedBatchOfManyCommands() async throws {
        try await withSharedRedis { client in
            let prefix = TestServices.uniqueName("pipeline")
            let count = 3000
            // Values with NUL and high bytes: arguments and replies must be binary-safe.
            let values = (0..<count).map { Data([0, 0xff, UInt8($0 & 0xff)] + Array("value-\($0)".utf8)) }
            let sets = (0..<count).map { RedisCommand(binary: [Data("SET".utf8), Data("\(prefix):\($0)".utf8), values[$0]]) }
            let setReplies = try await client.pipeline(sets)
            #expect(setReplies.count == count)
            #expect(setReplies.allSatisfy { $0 == .status("OK") })

            let gets = (0..<count).map { RedisCommand("GET", "\(prefix):\($0)") } + [RedisCommand("GET", "\(prefix):absent")]
            let getReplies = try await client.pipeline(gets)
            #expect(getReplies.dropLast() == ArraySlice(values.map { RedisReply.bulk($0) }))
            #expect(getReplies.last == .null)

            // An error reply in a pipeline answers that command only.
            let mixed = try await client.pipeline([
                RedisCommand("INCR", "\(prefix):0"), RedisCommand("INCRBY", "\(prefix):counter", "5"),
            ])
            guard case .error(let message) = mixed[0] else { throw ConformanceFailure("INCR of a non-number answered \(mixed[0])") }
            #expect(message.hasPrefix("ERR"))
            #expect(mixed[1] == .integer(5))

            // `send` turns an error reply into INTERNAL naming the server.
            let (error, _) = await expectStrataError(.internal, "INCR of a non-number") {
                try await client.send("INCR", "\(prefix):0")
            }
            #expect(error?.message.contains(client.endpoint) == true)
            #expect(error?.message.contains("INCR") == true)

            let deleted = try await client.send(RedisCommand(["DEL"] + (0..<count).map { "\(prefix):\($0)" } + ["\(prefix):counter"]))
            #expect(deleted == .integer(Int64(count + 1)))
        }
    }

    @Test func scriptsRunAndArraysDecode() async throws {
        try await withSharedRedis { client in
            let key = TestServices.uniqueName("script")
            let script = RedisScript("redis.call('SET', KEYS[1], ARGV[1]); return {ARGV[1], 42, redis.call('GET', KEYS[1])}")
            for _ in 0..<2 {
                let reply = try await client.evaluate(script, keys: [key], arguments: ["x"])
                #expect(reply == .array([.bulk(Data("x".utf8)), .integer(42), .bulk(Data("x".utf8))]))
            }
            let broken = RedisScript("this is not lua")
            await expectStrataError(.internal, "a script that does not compile") {
                try await client.evaluate(broken, keys: [], arguments: [])
            }
            try await client.send("DEL", key)
        }
    }

    @Test func selectsTheConfiguredDatabase() async throws {
        let key = TestServices.uniqueName("db")
        try await withSharedRedis({ $0.database = 3 }) { client in
            try await client.send("SET", key, "in-3")
            #expect(try await client.send("GET", key) == .bulk(Data("in-3".utf8)))
        }
        try await withSharedRedis { (client: RedisClient) async throws in
            #expect(try await client.send("GET", key) == .null, "database 3's key is visible in database 0")
        }
        try await withSharedRedis({ $0.database = 3 }) { client in _ = try await client.send("DEL", key) }
    }

    @Test func authenticatesWithAPassword() async throws {
        let server = try await PrivateRedis(extraArguments: ["--requirepass", "s3cret pass"])
        defer { server.kill() }

        var configuration = server.configuration
        configuration.password = "s3cret pass"
        let client = RedisClient(configuration)
        #expect(try await client.send("PING") == .status("PONG"))
        await client.shutdown()

        configuration.password = "wrong"
        let wrong = RedisClient(configuration)
        let (error, _) = await expectStrataError(.internal, "connecting with a wrong password") {
            try await wrong.send("PING")
        }
        #expect(error?.message.contains("127.0.0.1:\(server.port)") == true, "\(String(describing: error))")
        #expect(error?.message.contains("AUTH failed") == true, "\(String(describing: error))")
        await wrong.shutdown()

        configuration.password = nil
        let none = RedisClient(configuration)
        let (noAuth, _) = await expectStrataError(.internal, "connecting without the password") {
            try await none.send("PING")
        }
        #expect(noAuth?.message.contains("NOAUTH") == true, "\(String(describing: noAuth))")
        await none.shutdown()
    }

    /// Building a client (as loading a configuration does) starts nothing; its first call starts its
    /// threads, and a client shut down first never starts them.
    @Test func threadsStartWithTheFirstCall() async throws {
        let (reply, running) = try await withSharedRedis { client throws -> (RedisReply, Bool) in
            (try await client.send("PING"), client.isRunning)
        }
        #expect(reply == .status("PONG") && running)
        let unused = RedisClient(RedisConfiguration(host: "127.0.0.1", port: 1, retries: 0, poolSize: 2))
        #expect(!unused.isRunning)
        await unused.shutdown()
        let (error, _) = await expectStrataError(.unavailable, "a call after shutdown") { try await unused.send("PING") }
        #expect(error?.message.contains("shut down") == true, "\(String(describing: error))")
        #expect(!unused.isRunning)
    }

    @Test func unreachableServerIsUnavailableNamingIt() async throws {
        let closed = try ClosedLoopbackPort()
        let port = closed.port
        defer { withExtendedLifetime(closed) {} }
        // A long timeout: answering well within it shows a refused connection is not waited out.
        let client = RedisClient(RedisConfiguration(host: "127.0.0.1", port: port, retries: 2, poolSize: 1, timeout: .seconds(30)))
        let (error, seconds) = await expectStrataError(.unavailable, "a command to a port nobody listens on") {
            try await client.send("PING")
        }
        #expect(error?.message.contains("127.0.0.1:\(port)") == true, "\(String(describing: error))")
        #expect(error?.message.contains("3 attempts") == true, "\(String(describing: error))")
        #expect(seconds < 20, "took \(seconds) s")
        await client.shutdown()
    }

    @Test func outageAnswersUnavailableAndRecovers() async throws {
        let server = try await PrivateRedis()
        defer { server.kill() }
        var configuration = server.configuration
        // Long enough that failing well within it shows nothing waits for a timeout: tests run in
        // parallel on few cores, so tighter bounds would measure the scheduler.
        configuration.timeout = .seconds(30)
        let client = RedisClient(configuration)
        let index = RedisIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), client: client, prefix: "outage:")
        let before = Blob.random(size: 100)
        try await index.write(before.digest, data: before.data)
        #expect(try await index.findMissing([before.digest]).isEmpty)

        server.kill()
        // A read has its bytes from the storage: only its access-time refresh needed Redis.
        #expect(try await index.readAll(before.digest) == before.data)
        let after = Blob.random(size: 200)
        let operations: [(String, @Sendable () async throws -> Void)] = [
            ("findMissing", { _ = try await index.findMissing([before.digest]) }),
            ("write", { try await index.write(after.digest, data: after.data) }),
            ("delete", { try await index.delete([before.digest]) }),
            ("totals", { _ = try await index.totals() }),
            ("leastRecentlyAccessed", { _ = try await index.leastRecentlyAccessed(before: .distantFuture, limit: 10) }),
            ("removeEntries", { _ = try await index.removeEntries([before.digest], notAccessedSince: .distantFuture) }),
        ]
        for (name, operation) in operations {
            let (error, seconds) = await expectStrataError(.unavailable, "\(name) while Redis is down") { try await operation() }
            #expect(error?.message.contains("127.0.0.1:\(server.port)") == true, "\(String(describing: error))")
            #expect(seconds < 20, "\(name) took \(seconds) s to fail")
        }
        let batch = await index.writeBatch([(after.digest, after.data)])
        try expectFailure(batch[0], .unavailable, "writeBatch while Redis is down")

        // A command larger than a socket buffer, to a server that died while the connection sat idle:
        // the write after the peer's reset must fail with EPIPE, not kill the process with SIGPIPE.
        try await server.start()
        #expect(try await client.send("PING") == .status("PONG"))
        server.kill()
        let large = RedisCommand(binary: [Data("SET".utf8), Data("outage:large".utf8), Data(count: 32 << 20)])
        await expectStrataError(.unavailable, "a large command to a dead server") { try await client.send(large) }

        // Same port, empty data (no persistence): the client reconnects and reloads its scripts.
        try await server.start()
        #expect(try await index.findMissing([before.digest, after.digest]) == [before.digest, after.digest])
        try await index.write(after.digest, data: after.data)
        #expect(try await index.readAll(after.digest) == after.data)
        #expect(try await index.totals() == IndexTotals(bytes: 200, blobs: 1))
        await client.shutdown()
    }

    @Test func stalledServerTimesOutAsUnavailable() async throws {
        let server = try await PrivateRedis()
        defer {
            server.signal(SIGCONT)
            server.kill()
        }
        var configuration = server.configuration
        configuration.timeout = .seconds(3)
        let client = RedisClient(configuration)
        #expect(try await client.send("PING") == .status("PONG"))

        server.signal(SIGSTOP)
        let (error, seconds) = await expectStrataError(.unavailable, "a command to a stopped server") {
            try await client.send("PING")
        }
        #expect(error?.message.contains("did not answer") == true, "\(String(describing: error))")
        // One timeout, not one per retry (that would be 12 s); the margin is for a loaded machine.
        #expect(seconds >= 2.9 && seconds < 9, "took \(seconds) s")

        server.signal(SIGCONT)
        #expect(try await client.send("PING") == .status("PONG"))
        await client.shutdown()
    }
}
