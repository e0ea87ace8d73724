import Foundation
import PostgresNIO
import StrataCore
@testable import StrataSQL
import StrataStorage
import StrataTestSupport
import Testing

/// The SQL index when PostgreSQL hangs, a statement's answer is lost, or rows are locked.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLFaultTests {
    /// A removal sent again (its first answer lost after the commit, e.g. to a statement timeout)
    /// answers the blobs the first removed: before, it answered none, so they were never deleted from
    /// the storage (orphans) and stayed marked "being deleted" (writes of them stalled for the lease).
    @Test func removeEntriesSentAgainAnswersWhatItRemoved() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection)
            let blobs = (0..<3).map { _ in Blob.random(size: 500) }
            for blob in blobs { try await index.write(blob.digest, data: blob.data) }
            let cutoff = Date().addingTimeInterval(3600)
            let digests = blobs.map(\.digest)

            let first = try await index.removeEntries(digests, notAccessedSince: cutoff, token: "call-1")
            #expect(Set(first) == Set(digests))
            let again = try await index.removeEntries(digests, notAccessedSince: cutoff, token: "call-1")
            #expect(Set(again) == Set(digests), "the same call sent again answered \(again)")
            // Another call did not remove them: it gets none.
            #expect(try await index.removeEntries(digests, notAccessedSince: cutoff, token: "call-2").isEmpty)

            try await index.backingStore.delete(again)
            try await index.finishDeleting(again)
            #expect(try await index.findMissing(digests).count == digests.count)
            #expect(try await index.backingStore.findMissing(digests).count == digests.count)
            // No mark left to stall a new write of them.
            let (error, elapsed) = await timedError { try await index.write(blobs[0].digest, data: blobs[0].data) }
            #expect(error == nil && elapsed < .seconds(60), "\(String(describing: error)) after \(elapsed)")
        }
    }

    /// Refreshing an access time never waits for a row another statement holds: the read used to
    /// wait for the lock and fail with UNAVAILABLE at the lock timeout (5 s).
    @Test(.timeLimit(.minutes(1)))
    func readOfALockedRowIsAnswered() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection)
            let blob = Blob.random(size: 700)
            try await index.write(blob.digest, data: blob.data)
            try await SQLIndexTests.age(connection, blob.digest, seconds: 3600)

            let (locked, lockedSignal) = AsyncStream<Void>.makeStream()
            let holder = Task {
                try await connection.withConnection("holding a row lock") { postgres in
                    try await postgres.withTransaction(logger: connection.logger) { transaction in
                        _ = try await transaction.query(
                            "SELECT 1 FROM strata_index WHERE hash = \(SQLDigestKeys.hashBytes(blob.digest)) FOR UPDATE",
                            logger: connection.logger
                        ).collect()
                        lockedSignal.yield()
                        _ = try await transaction.query("SELECT pg_sleep(7)", logger: connection.logger).collect()
                    }
                }
            }
            for await _ in locked { break }
            let (error, _) = await timedError {
                let data = try await index.readAll(blob.digest)
                #expect(data == blob.data)
            }
            #expect(error == nil, "a read of a locked row: \(String(describing: error))")
            _ = try await holder.value
        }
    }

    /// A PostgreSQL that accepts connections and answers nothing: calls are UNAVAILABLE within the
    /// statement timeout, or the client's deadline when sooner; once it answers again, calls succeed
    /// at once on new connections instead of timing out once more on each stale pooled one.
    @Test(.timeLimit(.minutes(2)))
    func hungDatabaseIsUnavailableQuicklyAndRecovers() async throws {
        let url = try SQLTestDatabase.url()
        guard let components = URLComponents(string: url), let port = components.port else {
            throw MissingServiceError("STRATA_TEST_POSTGRES names no port: \(url)")
        }
        let proxy = try FaultProxy(targetPort: port)
        defer { proxy.stop() }
        var proxied = components
        proxied.host = "127.0.0.1"
        proxied.port = proxy.port
        guard let proxiedURL = proxied.string else { throw MissingServiceError("cannot rewrite \(url)") }
        let schema = SQLTestDatabase.uniqueSchema()
        try await SQLTestDatabase.with(schema: schema) { direct, _ in
            try await direct.migrate()
            var settings = try SQLTestDatabase.settings(url: proxiedURL, schema: schema)
            settings.connectionTimeout = .seconds(2)
            settings.poolTimeout = .seconds(6)
            settings.statementTimeout = .seconds(6)
            settings.poolSize = 3
            settings.maxOverflow = 0
            let connection = SQLConnection(settings: settings)
            let index = try SQLIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection,
                                     maxInlineBlobSize: 1000)
            try await SQLTestDatabase.running([connection]) {
                let blob = Blob.random(size: 500)
                try await index.write(blob.digest, data: blob.data)
                // Several pooled connections through the proxy, for the hang to catch.
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<6 { group.addTask { _ = try await index.findMissing([blob.digest]) } }
                    try await group.waitForAll()
                }

                proxy.hang()
                let (error, elapsed) = await timedError { _ = try await index.findMissing([blob.digest]) }
                #expect(error?.code == .unavailable, "\(String(describing: error))")
                // A liveness bound (the statement timeout is 6 s): it used to be 30 s.
                #expect(elapsed < .seconds(20), "findMissing on a hung database took \(elapsed)")
                let (deadlineError, deadlineElapsed) = await timedError {
                    try await RequestDeadline.withDeadline(.now + .seconds(1)) {
                        _ = try await index.readAll(blob.digest)
                    }
                }
                #expect(deadlineError?.code == .unavailable, "\(String(describing: deadlineError))")
                #expect(deadlineElapsed < .seconds(5), "a read with a 1 s deadline took \(deadlineElapsed)")

                proxy.forward()
                for round in 0..<4 {
                    let (recoveredError, recoveredElapsed) = await timedError {
                        let data = try await index.readAll(blob.digest)
                        #expect(data == blob.data)
                    }
                    #expect(recoveredError == nil, "call \(round) after recovery: \(String(describing: recoveredError))")
                    // Below the 6 s a stale connection would cost.
                    #expect(recoveredElapsed < .seconds(5), "call \(round) after recovery took \(recoveredElapsed)")
                }
            }
        }
    }
}
