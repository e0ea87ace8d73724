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
