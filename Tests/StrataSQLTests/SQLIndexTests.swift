import Foundation
import StrataCore
@testable import StrataSQL
import StrataStorage
import StrataTestSupport
import Testing

@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLIndexTests {
    /// The recorded access time of `digest` (nil: no entry).
    static func accessed(_ index: SQLIndex, _ digest: Digest) async throws -> Date? {
        try await index.leastRecentlyAccessed(before: Date().addingTimeInterval(3600), limit: 1000)
            .first { $0.digest == digest }?.accessed
    }

    static func age(_ connection: SQLConnection, _ digest: Digest, seconds: Int) async throws {
        try await SQLTestDatabase.execute(connection, """
            UPDATE strata_index SET accessed_at = now() - interval '\(seconds) seconds'
            WHERE hash = '\\x\(digest.hash)' AND size = \(digest.sizeBytes)
            """)
    }

    @Test func usesRefreshTheAccessTime() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection)
            let blob = Blob.random(size: 1000)
            try await index.write(blob.digest, data: blob.data)
            let uses: [(String, @Sendable () async throws -> Void)] = [
                ("findMissing", { _ = try await index.findMissing([blob.digest]) }),
                ("read", { _ = try await index.readAll(blob.digest) }),
                ("write", { try await index.write(blob.digest, data: blob.data) }),
                ("readBatch", { _ = await index.readBatch([blob.digest]) }),
                ("writeBatch", { _ = await index.writeBatch([(blob.digest, blob.data)]) }),
            ]
            for (name, use) in uses {
                try await Self.age(connection, blob.digest, seconds: 3600)
                let before = try #require(try await Self.accessed(index, blob.digest))
                #expect(before < Date().addingTimeInterval(-3000), "aging failed before \(name)")
                try await use()
                let after = try #require(try await Self.accessed(index, blob.digest))
                #expect(after > Date().addingTimeInterval(-60), "\(name) did not refresh the access time")
            }
        }
    }

    @Test func youngAccessTimesAreLeftAlone() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(
                backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection,
                refreshAccessTimeOlderThan: .seconds(600))
            let blob = Blob.random(size: 1000)
            try await index.write(blob.digest, data: blob.data)
            try await Self.age(connection, blob.digest, seconds: 300)
            let aged = try #require(try await Self.accessed(index, blob.digest))
            _ = try await index.findMissing([blob.digest])
            _ = try await index.readAll(blob.digest)
            #expect(try await Self.accessed(index, blob.digest) == aged, "a use refreshed an access time younger than the threshold")
            try await Self.age(connection, blob.digest, seconds: 900)
            _ = try await index.findMissing([blob.digest])
            let refreshed = try #require(try await Self.accessed(index, blob.digest))
            #expect(refreshed > Date().addingTimeInterval(-60), "an access time older than the threshold was not refreshed")
            try await Self.age(connection, blob.digest, seconds: 900)
            _ = try await index.readAll(blob.digest)
            #expect(try #require(try await Self.accessed(index, blob.digest)) > Date().addingTimeInterval(-60))
        }
    }

    @Test func leastRecentlyAccessedComesInOrder() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            let index = try SQLIndex(
                backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection, readOnlyConnection: readOnly)
            let blobs = (0..<4).map { _ in Blob.random(size: 100) }
            for blob in blobs { try await index.write(blob.digest, data: blob.data) }
            try await Self.age(connection, blobs[0].digest, seconds: 3 * 3600)
            try await Self.age(connection, blobs[1].digest, seconds: 1 * 3600)
            try await Self.age(connection, blobs[2].digest, seconds: 2 * 3600)
            let cutoff = Date().addingTimeInterval(-1800)
            let all = try await index.leastRecentlyAccessed(before: cutoff, limit: 10)
            #expect(all.map(\.digest) == [blobs[0].digest, blobs[2].digest, blobs[1].digest])
            #expect(all.allSatisfy { $0.accessed < cutoff })
            let two = try await index.leastRecentlyAccessed(before: cutoff, limit: 2)
            #expect(two.map(\.digest) == [blobs[0].digest, blobs[2].digest])
        }
    }

    @Test func removeEntriesKeepsBlobsUsedAfterTheCutoff() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let backing = LRUBlobStore(capacityBytes: 1 << 20)
            let index = try SQLIndex(backingStore: backing, connection: connection)
            let used = Blob.random(size: 300)
            let unused = Blob.random(size: 400)
            for blob in [used, unused] {
                try await index.write(blob.digest, data: blob.data)
                try await Self.age(connection, blob.digest, seconds: 3600)
            }
            let cutoff = Date().addingTimeInterval(-1800)
            let candidates = try await index.leastRecentlyAccessed(before: cutoff, limit: 10).map(\.digest)
            #expect(Set(candidates) == [used.digest, unused.digest])
            // The blob is used between the listing and the removal.
            #expect(try await index.findMissing([used.digest]).isEmpty)
            let removed = try await index.removeEntries(candidates, notAccessedSince: cutoff)
            #expect(removed == [unused.digest])
            #expect(try await index.findMissing([used.digest, unused.digest]) == [unused.digest])
            #expect(try await index.totals() == IndexTotals(bytes: 300, blobs: 1))
            // Removing again removes nothing.
            #expect(try await index.removeEntries([unused.digest], notAccessedSince: cutoff).isEmpty)
        }
    }

    @Test func totalsFollowWritesDeletesAndRemovals() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            let index = try SQLIndex(
                backingStore: LRUBlobStore(capacityBytes: 64 << 20), connection: connection, readOnlyConnection: readOnly,
                maxInlineBlobSize: 200)
            #expect(try await index.totals() == IndexTotals(bytes: 0, blobs: 0))
            let small = Blob.random(size: 150)  // inline
            let medium = Blob.random(size: 5000)
            try await index.write(small.digest, data: small.data)
            try await index.write(medium.digest, data: medium.data)
            try await index.write(medium.digest, data: medium.data)
            #expect(try await index.totals() == IndexTotals(bytes: 5150, blobs: 2))

            // Eight concurrent writers of one blob, and a batch naming a blob twice: each counted once.
            let shared = Blob.random(size: 1 << 20)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 { group.addTask { try await index.write(shared.digest, data: shared.data) } }
                try await group.waitForAll()
            }
            let batched = Blob.random(size: 700)
            let results = await index.writeBatch([(batched.digest, batched.data), (batched.digest, batched.data), (small.digest, small.data)])
            #expect(results.allSatisfy { if case .success = $0 { true } else { false } })
            #expect(try await index.totals() == IndexTotals(bytes: 5150 + (1 << 20) + 700, blobs: 4))

            try await index.delete([medium.digest, Blob.random(size: 3).digest])
            #expect(try await index.totals() == IndexTotals(bytes: 150 + (1 << 20) + 700, blobs: 3))
            try await Self.age(connection, shared.digest, seconds: 3600)
            let removed = try await index.removeEntries([shared.digest, batched.digest], notAccessedSince: Date().addingTimeInterval(-60))
            #expect(removed == [shared.digest])
            #expect(try await index.totals() == IndexTotals(bytes: 850, blobs: 2))
        }
    }

    @Test func readHealsAnEntryWhoseBlobWasLost() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let backing = LRUBlobStore(capacityBytes: 1 << 20)
            let index = try SQLIndex(backingStore: backing, connection: connection)
            let blob = Blob.random(size: 2000)
            try await index.write(blob.digest, data: blob.data)
            try await backing.delete([blob.digest])
            #expect(try await index.findMissing([blob.digest]).isEmpty, "the index answers findMissing alone")
            try await expectError(.notFound, "reading a blob the storage lost") { _ = try await index.readAll(blob.digest) }
            #expect(try await index.findMissing([blob.digest]) == [blob.digest], "the stale entry was not removed")
            #expect(try await index.totals() == IndexTotals(bytes: 0, blobs: 0))
        }
    }

    @Test func inlineBlobsNeverReachTheBackingStore() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let backing = LRUBlobStore(capacityBytes: 1 << 20)
            let index = try SQLIndex(backingStore: backing, connection: connection, maxInlineBlobSize: 1000)
            let small = Blob.random(size: 1000)
            let batched = (0..<5).map { _ in Blob.random(size: 200) }
            let large = Blob.random(size: 1001)
            try await index.write(small.digest, data: small.data)
            _ = await index.writeBatch(batched.map { ($0.digest, $0.data) })
            #expect(backing.count == 0, "an inline blob reached the backing storage")
            try await index.write(large.digest, data: large.data)
            #expect(backing.count == 1)
            #expect(try await index.readAll(small.digest) == small.data)
            let part = try await index.read(small.digest, offset: 10, limit: 20).collect(limit: 100)
            #expect(part == small.data[10..<30])
            let batch = await index.readBatch(batched.map(\.digest))
            #expect(batch.map { try? $0.get() } == batched.map(\.data))
            #expect(try await index.findMissing([small.digest, large.digest] + batched.map(\.digest)).isEmpty)
            try await index.delete([small.digest])
            #expect(try await index.findMissing([small.digest]) == [small.digest])
        }
    }

    @Test func findMissingWorksAcrossWindows() async throws {
        try await SQLTestDatabase.with { connection, _ in
            let index = try SQLIndex(backingStore: LRUBlobStore(capacityBytes: 1 << 20), connection: connection, windowSize: 3)
            let stored = (0..<7).map { _ in Blob.random(size: 50) }
            _ = await index.writeBatch(stored.map { ($0.digest, $0.data) })
            let absent = (0..<5).map { _ in Blob.random(size: 50).digest }
            let asked = zip(stored.prefix(5).map(\.digest), absent).flatMap { [$0, $1] } + stored.suffix(2).map(\.digest)
            #expect(try await index.findMissing(asked) == absent)
        }
    }

    /// Writes and deletes of one blob never overlap: an upload during a cleanup delete is kept.
    @Test(arguments: IndexMarksConformance.cases)
    func writeAndDeleteMarks(_ check: IndexMarksConformance) async throws {
        try await SQLTestDatabase.with { connection, _ in
            try await check.run { backing, lease in
                try SQLIndex(backingStore: backing, connection: connection, deletionLease: lease)
            }
        }
    }
}

@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLMigrationTests {
    @Test func migratingTwiceAppliesOnce() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            let first = try await connection.migrate()
            let second = try await connection.migrate()
            #expect(first == [1, 2, 3, 4, 5, 6, 7] && second == [])
            await #expect(throws: StrataError.self) { try await readOnly.migrate() }
        }
    }

    /// A database at version 1 with blobs in it gains `stored_at` (the time of the upgrade) from version 2,
    /// the index marks table from version 3, `compressed` (false: its rows stay as they were) from 5, and
    /// the scheduler's tables from 6.
    @Test func upgradeFromVersionOneKeepsTheBlobs() async throws {
        try await SQLTestDatabase.with { connection, _ in
            _ = try await connection.migrate()
            // Back to version 1's shape, with a blob stored then.
            try await SQLTestDatabase.execute(connection, "ALTER TABLE strata_blobs DROP COLUMN stored_at")
            try await SQLTestDatabase.execute(connection, "ALTER TABLE strata_blobs DROP COLUMN compressed")
            try await SQLTestDatabase.execute(connection, "DROP TABLE strata_index_marks")
            try await SQLTestDatabase.execute(connection, "DROP TABLE strata_operations, strata_jobs, strata_bot_sessions")
            try await SQLTestDatabase.execute(connection, "DELETE FROM strata_schema_version WHERE version >= 2")
            let blob = Blob.random(size: 100)
            try await SQLTestDatabase.execute(connection, """
                INSERT INTO strata_blobs (hash, size, data) VALUES ('\\x\(blob.digest.hash)', \(blob.digest.sizeBytes), '\\x\(blob.data.map { String(format: "%02x", $0) }.joined())')
                """)
            #expect(try await connection.migrate() == [2, 3, 4, 5, 6, 7])
            let storage = SQLBlobStore(connection: connection)
            #expect(try await storage.readAll(blob.digest) == blob.data)
            var listed: [StoredBlob] = []
            try await storage.forEachBlobPage(pageSize: 10) { listed += $0 }
            #expect(listed.map(\.digest) == [blob.digest])
            #expect(abs(try #require(listed.first).modified.timeIntervalSinceNow) < 300)
        }
    }

    @Test func concurrentMigrationsFromTwoServersApplyOnce() async throws {
        let schema = SQLTestDatabase.uniqueSchema()
        let url = try SQLTestDatabase.url()
        let first = SQLConnection(settings: try SQLTestDatabase.settings(url: url, schema: schema))
        let second = SQLConnection(settings: try SQLTestDatabase.settings(url: url, schema: schema))
        try await SQLTestDatabase.running([first, second]) {
            async let a = first.migrate()
            async let b = second.migrate()
            let applied = try await [a, b]
            #expect(applied.flatMap { $0 }.sorted() == [1, 2, 3, 4, 5, 6, 7], "migrations applied: \(applied)")
            try await SQLTestDatabase.execute(first, "SELECT 1 FROM strata_index_totals")
            let versions = try await first.withConnection("reading versions") { postgres in
                var found: [Int64] = []
                for try await version in try await postgres.query("SELECT version::int8 FROM strata_schema_version", logger: first.logger)
                    .decode(Int64.self) { found.append(version) }
                return found
            }
            #expect(versions.sorted() == [1, 2, 3, 4, 5, 6, 7])
            try await SQLTestDatabase.drop(schema, on: first)
        }
    }
}
