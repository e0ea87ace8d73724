import CZstd
import Foundation
import StrataCore

/// zstd (RFC 8878) through Debian's libzstd, streaming in bounded chunks both ways: memory depends on the
/// chunk size and the compression level, never on the size of the blob.
public enum Zstd {
    /// libzstd's own default level: a good speed/ratio trade-off, and what Bazel and bb-storage use.
    public static let defaultLevel: Int32 = 3

    /// The largest window a decompressor accepts: 2^23 = 8 MiB, the largest any level from 1 to 19 uses
    /// (only the "ultra" levels 20-22 and long-distance mode ask for more). Decompression memory is about
    /// the window, and a frame's header chooses it, so without a limit one small frame could make the
    /// server reserve up to 2 GiB per stream.
    public static let maximumWindowLog: Int32 = 23

    /// The levels libzstd accepts (negative levels are its "fast" levels).
    public static var levels: ClosedRange<Int32> { ZSTD_minCLevel()...ZSTD_maxCLevel() }

    /// An upper bound on the compressed size of `uncompressedSize` bytes sent by a client: libzstd's bound
    /// for one frame, plus 1 MiB for the block headers of a client that flushes often or splits its
    /// stream into several frames. Larger uploads are refused rather than read without end.
    public static func maximumCompressedSize(ofUncompressed uncompressedSize: Int64) -> Int64 {
        let size = max(0, uncompressedSize)
        // ZSTD_COMPRESSBOUND's formula, in 64 bits (the C function fails above 4 GiB on some builds).
        let margin: Int64 = size < (128 << 10) ? ((128 << 10) - size) >> 11 : 0
        let (bound, overflow) = size.addingReportingOverflow(size >> 8 + margin + (1 << 20))
        return overflow ? .max : bound
    }

    static func errorName(_ code: Int) -> String {
        String(cString: ZSTD_getErrorName(code))
    }

    static func isError(_ code: Int) -> Bool { ZSTD_isError(code) != 0 }
}

/// One zstd frame, compressed a chunk at a time. Not thread-safe: one stream uses it.
public final class ZstdCompressor {
    private let context: OpaquePointer
    private var ended = false

    /// `pledgedSize`, when known, goes into the frame header (decompressors can size their buffers) and
    /// libzstd checks that exactly that many bytes are compressed.
    public init(level: Int32 = Zstd.defaultLevel, pledgedSize: Int64? = nil) throws(StrataError) {
        guard let context = ZSTD_createCCtx() else { throw .internal("zstd: could not allocate a compression context") }
        self.context = context
        var result = ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        if !Zstd.isError(result), let pledgedSize, pledgedSize >= 0 {
            result = ZSTD_CCtx_setPledgedSrcSize(context, UInt64(pledgedSize))
        }
        if !Zstd.isError(result) { result = ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1) }
        guard !Zstd.isError(result) else {
            throw .internal("zstd: could not set up compression at level \(level): \(Zstd.errorName(result))")
        }
    }

    deinit { ZSTD_freeCCtx(context) }

    /// Compresses `input`; the answer holds what libzstd has flushed so far (often nothing for small inputs).
    public func compress(_ input: Data) throws(StrataError) -> Data {
        try run(input, end: false)
    }

    /// Ends the frame: the rest of the compressed bytes.
    public func finish() throws(StrataError) -> Data {
        try run(Data(), end: true)
    }

    private func run(_ input: Data, end: Bool) throws(StrataError) -> Data {
        precondition(!ended, "a zstd frame was compressed after its end")
        let outputSize = ZSTD_CStreamOutSize()
        var output = Data()
        var failure: Int?
        input.withUnsafeBytes { (source: UnsafeRawBufferPointer) in
            var inBuffer = ZSTD_inBuffer(src: source.baseAddress, size: source.count, pos: 0)
            var chunk = [UInt8](repeating: 0, count: outputSize)
            while true {
                let (result, written) = chunk.withUnsafeMutableBytes { (destination: UnsafeMutableRawBufferPointer) in
                    var outBuffer = ZSTD_outBuffer(dst: destination.baseAddress, size: destination.count, pos: 0)
                    let result = ZSTD_compressStream2(context, &outBuffer, &inBuffer, end ? ZSTD_e_end : ZSTD_e_continue)
                    return (result, outBuffer.pos)
                }
                if Zstd.isError(result) {
                    failure = result
                    return
                }
                output.append(contentsOf: chunk[..<written])
                // Done when libzstd flushed everything (end) or took all of the input (continue).
                if end ? result == 0 : inBuffer.pos == inBuffer.size { return }
            }
        }
        if let failure { throw .internal("zstd compression failed: \(Zstd.errorName(failure))") }
        if end { ended = true }
        return output
    }
}

/// Decompresses a zstd stream (one frame or several, concatenated) of a blob whose size is known, and
/// refuses anything but exactly that: it stops with `failureCode` (INVALID_ARGUMENT for a client's
/// data, DATA_LOSS for a stored copy) as soon as the output would pass
/// `expectedSize` (a decompression bomb never gets to produce more than one byte too many), on corrupt
/// data, trailing garbage (which is not a frame), a truncated frame, a frame whose window is larger than
/// `Zstd.maximumWindowLog`, or an output shorter than `expectedSize`. Not thread-safe: one stream uses it.
public final class ZstdDecompressor {
    private let context: OpaquePointer
    public let expectedSize: Int64
    /// Names the blob in error messages, e.g. "blob 1234…/5".
    public let subject: String
    public let failureCode: StrataError.Code
    public private(set) var produced: Int64 = 0

    private var input = Data()
    private var inputPosition = 0
    /// libzstd's last answer: 0 when the frame it worked on is complete and flushed.
    private var lastResult = 0
    private var sawInput = false
    /// The last call filled its output buffer, so libzstd may hold more output without needing input.
    private var outputPending = false

    public init(expectedSize: Int64, subject: String, failureCode: StrataError.Code = .invalidArgument) throws(StrataError) {
        guard let context = ZSTD_createDCtx() else { throw .internal("zstd: could not allocate a decompression context") }
        self.context = context
        self.expectedSize = expectedSize
        self.subject = subject
        self.failureCode = failureCode
        let result = ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, Zstd.maximumWindowLog)
        guard !Zstd.isError(result) else { throw .internal("zstd: could not limit the window: \(Zstd.errorName(result))") }
    }

    deinit { ZSTD_freeDCtx(context) }

    /// True when the input fed so far is used up and the next `output` needs more of it.
    public var needsInput: Bool { inputPosition >= input.count && !outputPending }

    /// Adds compressed bytes; call only when `needsInput`.
    public func feed(_ chunk: Data) {
        precondition(needsInput, "zstd input was fed before the previous input was used")
        input = chunk
        inputPosition = 0
        if !chunk.isEmpty { sawInput = true }
    }

    /// Decompresses up to `maximumCount` bytes from the input fed so far; empty when it needs more input.
    public func output(maximumCount: Int = BlobBody.defaultChunkSize) throws(StrataError) -> Data {
        // One byte more than the blob may still have, so that a bomb is caught at its first extra byte.
        let remaining = expectedSize - produced
        let capacity = remaining >= Int64(maximumCount) ? maximumCount : Int(max(0, remaining)) + 1
        var output = Data(count: capacity)
        var written = 0
        var failure: Int?
        output.withUnsafeMutableBytes { (destination: UnsafeMutableRawBufferPointer) in
            input.withUnsafeBytes { (source: UnsafeRawBufferPointer) in
                var outBuffer = ZSTD_outBuffer(dst: destination.baseAddress, size: capacity, pos: 0)
                var inBuffer = ZSTD_inBuffer(src: source.baseAddress, size: source.count, pos: inputPosition)
                while outBuffer.pos < outBuffer.size && (inBuffer.pos < inBuffer.size || outputPending) {
                    let before = (inBuffer.pos, outBuffer.pos)
                    let result = ZSTD_decompressStream(context, &outBuffer, &inBuffer)
                    if Zstd.isError(result) {
                        failure = result
                        break
                    }
                    outputPending = outBuffer.pos == outBuffer.size
                    // A call that moved nothing (no input, nothing buffered) starts no frame: its answer, a
                    // hint for the next frame's header, must not hide that the last frame ended.
                    if (inBuffer.pos, outBuffer.pos) == before { break }
                    lastResult = result
                }
                inputPosition = inBuffer.pos
                written = outBuffer.pos
            }
        }
        if let failure {
            throw StrataError(failureCode, "the zstd data of \(subject) is not valid: \(Zstd.errorName(failure))")
        }
        produced += Int64(written)
        guard produced <= expectedSize else {
            throw StrataError(failureCode,
                "the zstd data of \(subject) decompresses to more than the digest's \(expectedSize) bytes")
        }
        return written == capacity ? output : output.prefix(written)
    }

    /// Checks that the stream ended where a frame ends, with exactly `expectedSize` bytes out.
    /// Call once the input is used up (`needsInput`) and there is no more.
    public func finish() throws(StrataError) {
        precondition(needsInput, "a zstd stream was finished before its input was used")
        guard sawInput && lastResult == 0 else {
            throw StrataError(failureCode, "the zstd data of \(subject) ends inside a frame (truncated)")
        }
        guard produced == expectedSize else {
            throw StrataError(failureCode,
                "the zstd data of \(subject) decompresses to \(produced) bytes, the digest says \(expectedSize)")
        }
    }

    /// Decompresses a whole small blob held in memory (batch calls).
    public static func decompress(
        _ data: Data, expectedSize: Int64, subject: String, failureCode: StrataError.Code = .invalidArgument
    ) throws(StrataError) -> Data {
        let decompressor = try ZstdDecompressor(expectedSize: expectedSize, subject: subject, failureCode: failureCode)
        decompressor.feed(data)
        var result = Data()
        while !decompressor.needsInput {
            result.append(try decompressor.output())
        }
        try decompressor.finish()
        return result
    }
}

extension ZstdCompressor {
    /// Compresses a whole small blob held in memory (batch calls).
    public static func compress(_ data: Data, level: Int32 = Zstd.defaultLevel) throws(StrataError) -> Data {
        let compressor = try ZstdCompressor(level: level, pledgedSize: Int64(data.count))
        var result = try compressor.compress(data)
        result.append(try compressor.finish())
        return result
    }
}

extension BlobBody {
    /// This body as one zstd frame, produced as the consumer asks for it: a chunk in, at most about a
    /// chunk out. `uncompressedSize`, when known, is written into the frame header (and checked).
    public func zstdCompressed(level: Int32 = Zstd.defaultLevel, uncompressedSize: Int64? = nil) -> BlobBody {
        let source = self
        return BlobBody {
            var iterator = source.makeAsyncIterator()
            var compressor: ZstdCompressor?
            var finished = false
            return AsyncIterator {
                if compressor == nil { compressor = try ZstdCompressor(level: level, pledgedSize: uncompressedSize) }
                while !finished {
                    guard let chunk = try await iterator.next() else {
                        finished = true
                        return try compressor!.finish()
                    }
                    let compressed = try compressor!.compress(chunk)
                    if !compressed.isEmpty { return compressed }
                }
                return nil
            }
        }
    }

    /// This body's zstd stream decompressed, in chunks of at most `BlobBody.defaultChunkSize`. It throws
    /// `failureCode` (see `ZstdDecompressor`) *instead of* ending when the data is not exactly
    /// `expectedSize` bytes of valid zstd, so a store that commits only on a normal end stores nothing.
    public func zstdDecompressed(
        expectedSize: Int64, subject: String, failureCode: StrataError.Code = .invalidArgument
    ) -> BlobBody {
        let source = self
        return BlobBody {
            var iterator = source.makeAsyncIterator()
            var decompressor: ZstdDecompressor?
            var finished = false
            return AsyncIterator {
                if decompressor == nil { decompressor = try ZstdDecompressor(expectedSize: expectedSize, subject: subject, failureCode: failureCode) }
                let decompressor = decompressor!
                while !finished {
                    if decompressor.needsInput {
                        guard let chunk = try await iterator.next() else {
                            finished = true
                            try decompressor.finish()
                            return nil
                        }
                        decompressor.feed(chunk)
                    }
                    let output = try decompressor.output()
                    if !output.isEmpty { return output }
                }
                return nil
            }
        }
    }
}

extension BlobBody {
    /// Bytes `[range.lowerBound, range.upperBound)` of this body: the ones before are read and dropped
    /// (a compressed copy cannot be entered in the middle).
    public func slice(_ range: Range<Int64>) -> BlobBody {
        let source = self
        return BlobBody {
            var iterator = source.makeAsyncIterator()
            var position: Int64 = 0
            return AsyncIterator {
                while position < range.upperBound {
                    guard let chunk = try await iterator.next() else { return nil }
                    let start = position
                    position += Int64(chunk.count)
                    let from = Swift.max(start, range.lowerBound), to = Swift.min(position, range.upperBound)
                    if from >= to { continue }
                    let base = chunk.startIndex
                    return chunk[(base + Int(from - start))..<(base + Int(to - start))]
                }
                return nil
            }
        }
    }
}
