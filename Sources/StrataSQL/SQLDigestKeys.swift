import Foundation
import PostgresNIO
import StrataCore

/// Digests as the SQL tables key them: the hash as raw bytes (`bytea`) and the size.
///
/// A SHA-256 hash is its 32 bytes, as in every row written before other digest functions existed. A
/// hash of any other function is its bytes followed by one byte, the function's `DigestFunction.Value`
/// (e.g. 33 bytes ending in 9 for BLAKE3): a BLAKE3 and a SHA-256 blob with the same hash and size are
/// two rows, with no change to the tables or their existing rows (no migration).
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
        buffer.reserveCapacity(digest.hash.utf8.count / 2 + 1)
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
        if digest.function != .sha256 { buffer.writeInteger(UInt8(digest.function.rawValue)) }
        return buffer
    }

    /// The digest a row names; INTERNAL when the row holds something that is not one.
    static func digest(hash: ByteBuffer, size: Int64) throws -> Digest {
        do throws(StrataError) {
            let bytes = hash.readableBytesView
            var function = DigestFunction.sha256
            if bytes.count != function.hexLength / 2 {
                guard let tag = bytes.last, let tagged = DigestFunction(rawValue: Int(tag)), tagged != .sha256,
                      bytes.count - 1 == tagged.hexLength / 2
                else {
                    throw StrataError.invalidArgument(
                        "\(bytes.count) hash bytes are neither a SHA-256 hash nor another function's hash and its tag")
                }
                function = tagged
            }
            let hashBytes = function == .sha256 ? bytes[...] : bytes.dropLast()
            return try Digest(hash: hashBytes.hexString, sizeBytes: size, function: function)
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
