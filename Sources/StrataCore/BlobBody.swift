import Foundation

/// A blob's bytes as a pull-based stream of chunks.
///
/// Producers make a chunk only when the consumer asks for the next one, so a multi-GiB blob flows from a
/// client to a disk (or back) holding a few chunks in memory, never the whole blob.
public struct BlobBody: AsyncSequence, Sendable {
    public typealias Element = Data

    public struct AsyncIterator: AsyncIteratorProtocol {
        fileprivate let nextChunk: () async throws -> Data?

        public init(_ nextChunk: @escaping () async throws -> Data?) {
            self.nextChunk = nextChunk
        }

        public mutating func next() async throws -> Data? {
            try await nextChunk()
        }
    }

    private let makeIterator: @Sendable () -> AsyncIterator

    public init(makeIterator: @escaping @Sendable () -> AsyncIterator) {
        self.makeIterator = makeIterator
    }

    /// Wraps any Sendable sequence of chunks.
    public init<Chunks: AsyncSequence & Sendable>(_ chunks: Chunks) where Chunks.Element == Data {
        self.makeIterator = {
            var iterator = chunks.makeAsyncIterator()
            return AsyncIterator { try await iterator.next() }
        }
    }

    /// Serves `data` in slices of at most `chunkSize` bytes; the slices share `data`'s storage.
    public init(data: Data, chunkSize: Int = BlobBody.defaultChunkSize) {
        precondition(chunkSize > 0)
        self.makeIterator = {
            var position = data.startIndex
            return AsyncIterator {
                guard position < data.endIndex else { return nil }
                let end = data.index(position, offsetBy: chunkSize, limitedBy: data.endIndex) ?? data.endIndex
                defer { position = end }
                return data[position..<end]
            }
        }
    }

    public static let empty = BlobBody(data: Data())

    /// The bytes of `range`, `chunkSize` at a time from `fetch(offset, count)`, which returns exactly
    /// `count` bytes or throws. `first` is the range's first chunk, which a store fetches before
    /// returning the body, so that an absent blob fails the read itself rather than the stream.
    public static func ranged(
        _ range: Range<Int64>, chunkSize: Int64, first: Data,
        fetch: @escaping @Sendable (_ offset: Int64, _ count: Int64) async throws -> Data
    ) -> BlobBody {
        precondition(chunkSize > 0)
        return BlobBody {
            var position = range.lowerBound
            return AsyncIterator {
                guard position < range.upperBound else { return nil }
                let count = Swift.min(chunkSize, range.upperBound - position)
                let chunk: Data
                if position == range.lowerBound { chunk = first } else { chunk = try await fetch(position, count) }
                position += count
                return chunk
            }
        }
    }

    /// 1 MiB: large enough that per-chunk costs vanish, small enough to keep memory flat.
    public static let defaultChunkSize = 1 << 20

    public func makeAsyncIterator() -> AsyncIterator { makeIterator() }

    /// Gathers the whole body. Only for blobs known to be small (batch calls, protos, tests).
    public func collect(limit: Int64) async throws -> Data {
        var out = Data()
        for try await chunk in self {
            guard Int64(out.count + chunk.count) <= limit else {
                throw StrataError.resourceExhausted("blob is larger than the \(limit) bytes this call can hold in memory")
            }
            out.append(chunk)
        }
        return out
    }

    /// Passes the chunks through while hashing them. It throws INVALID_ARGUMENT as soon as more bytes
    /// arrive than the digest's size, and at the end if the size or hash differ, *instead of* ending:
    /// a store that commits only when the body ends normally can never commit a wrong blob.
    public func verifying(_ digest: Digest) -> BlobBody {
        let source = self
        return BlobBody {
            var iterator = source.makeAsyncIterator()
            var hasher = digest.function.makeHasher()
            var finished = false
            return AsyncIterator {
                guard !finished else { return nil }
                guard let chunk = try await iterator.next() else {
                    finished = true
                    guard hasher.byteCount == digest.sizeBytes else {
                        throw StrataError.invalidArgument(
                            "blob \(digest): received \(hasher.byteCount) bytes, the digest says \(digest.sizeBytes)")
                    }
                    let actual = hasher.finalizeDigest()
                    guard actual == digest else { throw Digest.hashMismatch(digest, actual: actual.hash) }
                    return nil
                }
                hasher.update(chunk)
                guard hasher.byteCount <= digest.sizeBytes else {
                    finished = true
                    throw StrataError.invalidArgument(
                        "blob \(digest): received at least \(hasher.byteCount) bytes, more than the digest's \(digest.sizeBytes)")
                }
                return chunk
            }
        }
    }
}
