import Foundation
import StrataCore

extension FastCDC2020 {
    /// Splits a streamed blob into chunks, handing each to `handle` in order as soon as its end is known.
    ///
    /// Memory stays bounded whatever the blob's size: a cut depends only on the next `maximumSize` bytes,
    /// so at most about twice that plus one chunk of the body is held.
    public func split(_ body: BlobBody, _ handle: (Data) async throws -> Void) async throws {
        let maximum = parameters.maximumSize
        var buffer: [UInt8] = []
        var start = 0
        var ended = false
        var iterator = body.makeAsyncIterator()
        while true {
            // A cut is final only with `maximum` bytes ahead of it, or the end of the blob.
            while !ended && buffer.count - start < maximum {
                if start >= maximum {
                    // Drop what was handed out, once it is as large as what a cut looks at: each byte
                    // is moved at most a few times.
                    buffer.removeSubrange(0..<start)
                    start = 0
                }
                guard let next = try await iterator.next() else {
                    ended = true
                    break
                }
                buffer.append(contentsOf: next)
            }
            guard start < buffer.count else { return }
            let length = buffer.withUnsafeBytes { bytes in
                chunkLength(UnsafeRawBufferPointer(rebasing: bytes[start...]))
            }
            try await handle(Data(buffer[start..<(start + length)]))
            start += length
        }
    }
}
