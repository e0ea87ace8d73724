import Foundation
import GRPCCore
import StrataAPI
import StrataActionCache
import StrataCore
import StrataExecution
import StrataScheduler
import SwiftProtobuf
import Testing

@Suite struct ExecutionSoakTests {
    /// Many distinct no-op actions through Execute streams and four bots written here (capacity 4
    /// each), concurrently: every stream ends with its own COMPLETED response and every result is
    /// cached; nothing is lost or run twice. Prints the rate (not asserted).
    @Test func manyActionsThroughFourBots() async throws {
        let actions = 200
        try await withExecutionServer(cache: LRUActionCache(maxEntries: 1000)) { server in
            var digests: [Digest] = []
            for index in 0..<actions { digests.append(try await server.storeAction(["echo", "\(index)"])) }
            let started = ContinuousClock.now
            let ran = try await withThrowingTaskGroup(of: Int.self) { group in
                for bot in 0..<4 {
                    group.addTask {
                        var session = try await server.createBot("bot-\(bot)", capacity: 4)
                        var completed = 0
                        let end = ContinuousClock.now + .seconds(60)
                        while ContinuousClock.now < end {
                            // Every lease runs at once: reported COMPLETED with its exit code 0.
                            session.leases = try session.leases.map { lease in
                                completed += 1
                                return try lease.completed(.with { $0.exitCode = 0; $0.stdoutRaw = Data(lease.id.utf8) })
                            }
                            do {
                                session = try await server.update(session, timeout: .seconds(1))
                            } catch let error as RPCError where error.code == .deadlineExceeded {
                                session.leases = []
                            } catch where Task.isCancelled {
                                break  // every stream ended: the bots are stopped mid-poll
                            }
                            if Task.isCancelled { break }
                        }
                        return completed
                    }
                }
                // At most 32 streams at once: the bots share the client's one HTTP/2 connection, whose
                // concurrent stream limit must leave room for their polls.
                let streams = try await withThrowingTaskGroup(of: Bool.self) { streams in
                    func execute(_ digest: Digest) {
                        streams.addTask {
                            let operations = try await server.execute(server.executeRequest(digest))
                            guard let response = operations.last?.executeResponse else { return false }
                            return operations.last?.done == true && response.status.code == 0 && !response.cachedResult
                        }
                    }
                    var pending = digests[...]
                    for digest in pending.prefix(32) { execute(digest) }
                    pending = pending.dropFirst(32)
                    var good = 0
                    while let ok = try await streams.next() {
                        if ok { good += 1 }
                        if let digest = pending.popFirst() { execute(digest) }
                    }
                    return good
                }
                #expect(streams == actions)
                group.cancelAll()
                var ran = 0
                for try await count in group { ran += count }
                return ran
            }
            let elapsed = ContinuousClock.now - started
            #expect(ran == actions, "the bots ran \(ran) leases for \(actions) actions")
            for digest in digests { #expect(try await server.cache.get(digest) != nil) }
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            print("execution soak: \(actions) actions through 4 bots in \(elapsed) (\(Int(Double(actions) / seconds)) actions/s)")
        }
    }
}
