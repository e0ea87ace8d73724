import Foundation
import PostgresNIO
import StrataCore

/// Digests as the SQL tables key them: the hash as raw bytes (`bytea`) and the size.
struct SQLDigestKeys: Sendable {
    var hashes: [ByteBuffer] = []
    var sizes: [Int64] = []

    init(_ digests: some Sequence<Digest>) {
        for digest in digests {
            hashes.append(Self.hashBytes(digest))
            sizes.append(digest.sizeBytes)
        }
    }

    static func hashBytes(_ digest: Digest) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(digest.hash.utf8.count / 2)
        var high: UInt8?
        for character in digest.hash.utf8 {
            // Digest guarantees lower-case hex.
            let nibble = character <= UInt8(ascii: "9") ? character - UInt8(ascii: "0") : character - UInt8(ascii: "a") + 10
            if let first = high {
                buffer.writeInteger(first << 4 | nibble)
                high = nil
            } else {
                high = nibble
            }
        }
        return buffer
    }

    /// The digest a row names; INTERNAL when the row holds something that is not one.
    static func digest(hash: ByteBuffer, size: Int64) throws -> Digest {
        do throws(StrataError) {
            return try Digest(hash: hash.readableBytesView.hexString, sizeBytes: size)
        } catch {
            throw StrataError.internal("SQL: a row holds an invalid digest: \(error.message)")
        }
    }
}

extension PostgresRowSequence {
    /// The digests of rows whose columns are (hash, size).
    func digests() async throws -> [Digest] {
        var digests: [Digest] = []
        for try await (hash, size) in decode((ByteBuffer, Int64).self) {
            digests.append(try SQLDigestKeys.digest(hash: hash, size: size))
        }
        return digests
    }
}

extension SQLConnection {
    /// Walks `table` (keyed by hash and size) in key order with each row's `timeColumn`, `pageSize` rows
    /// per statement after the last key seen (keyset pagination): no cursor or transaction stays open
    /// while `body` runs, each page is an index range scan, and bodies are never read. A row whose key
    /// names no digest was not written by Strata and is skipped. Runs on this connection once
    /// `migrating` has migrated.
    func forEachKeyPage(
        table: String, timeColumn: String, pageSize: Int, migrating: SQLConnection,
        _ body: ([(digest: Digest, time: Date)]) async throws -> Void
    ) async throws {
        try await migrating.ensureMigrated()
        let limit = Int64(max(pageSize, 1))
        let logger = self.logger
        var after: (hash: ByteBuffer, size: Int64)?
        while true {
            let last = after
            let page: (rows: [(digest: Digest, time: Date)], last: (ByteBuffer, Int64)?, count: Int) = try await withConnection(
                "listing \(table)"
            ) { connection in
                let rows: PostgresRowSequence
                if let last {
                    rows = try await connection.query(
                        """
                        SELECT hash, size, \(unescaped: timeColumn) FROM \(unescaped: table)
                        WHERE (hash, size) > (\(last.hash), \(last.size)) ORDER BY hash, size LIMIT \(limit)
                        """, logger: logger)
                } else {
                    rows = try await connection.query(
                        "SELECT hash, size, \(unescaped: timeColumn) FROM \(unescaped: table) ORDER BY hash, size LIMIT \(limit)",
                        logger: logger)
                }
                var page: [(digest: Digest, time: Date)] = []
                var lastKey: (ByteBuffer, Int64)?
                var count = 0
                for try await (hash, size, time) in rows.decode((ByteBuffer, Int64, Date).self) {
                    lastKey = (hash, size)
                    count += 1
                    guard let digest = try? SQLDigestKeys.digest(hash: hash, size: size) else { continue }
                    page.append((digest, time))
                }
                return (page, lastKey, count)
            }
            if !page.rows.isEmpty { try await body(page.rows) }
            guard let lastKey = page.last, page.count == Int(limit) else { return }
            after = lastKey
        }
    }
}

extension ByteBuffer {
    var asData: Data { Data(readableBytesView) }
}

extension PostgresConnection {
    /// Runs a statement that returns no rows, draining its result before the connection is reused.
    func execute(_ query: PostgresQuery, logger: Logger) async throws {
        for try await _ in try await self.query(query, logger: logger) {}
    }
}

extension Array {
    /// Consecutive slices of at most `size` elements.
    func windows(of size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: Swift.max(1, size)).map { self[$0..<Swift.min($0 + Swift.max(1, size), count)] }
    }
}
