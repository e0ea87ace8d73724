import NIOCore
import NIOHPACK
import NIOHTTP2
import StrataCore

/// The largest request message each method accepts, enforced so that a client over it gets
/// RESOURCE_EXHAUSTED naming the limit.
///
/// grpc-swift-nio-transport checks its `maxRequestPayloadSize` too, but answers a message over it by
/// resetting the stream with no status ("Failed to decode message" stays in the server), so a client
/// sees a broken stream and cannot tell what to change. `RequestSizeLimitHandler` reads each message's
/// length prefix as its first bytes arrive, before any of it is buffered, and answers there; the
/// transport's own limit is set to the largest of these, so it never fires first.
struct RequestSizeLimits: Sendable {
    /// Any method: a full batch (BatchUpdateBlobs) plus the digests and framing around it.
    let general: Int
    /// FindMissingBlobs carries digests only, and Bazel asks about every input of an action in one
    /// request: 16 MiB holds about 230,000 digests, while the decoded request stays bounded.
    let findMissingBlobs: Int

    static let findMissingBlobsPath = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"

    init(maxBatchTotalSizeBytes: Int64) {
        let (general, overflow) = Int(clamping: maxBatchTotalSizeBytes).addingReportingOverflow(1 << 20)
        self.general = overflow ? .max : general
        findMissingBlobs = max(self.general, 16 << 20)
    }

    /// The transport's limit: above every method's, so that this one answers first.
    var largest: Int { max(general, findMissingBlobs) }

    func limit(path: String?) -> Int {
        path == Self.findMissingBlobsPath ? findMissingBlobs : general
    }

    /// Puts the check in front of the gRPC handler of an accepted HTTP/2 stream.
    func install(on channel: any Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(RequestSizeLimitHandler(limits: self), position: .first)
        }
    }
}

/// Watches the gRPC length prefixes of one stream's request messages (1 byte compressed flag, 4 bytes
/// big-endian length, then the message) across DATA frames. The first message longer than the
/// method's limit is answered at once with trailers carrying RESOURCE_EXHAUSTED and the limit, then
/// RST_STREAM NO_ERROR so the client stops sending (RFC 9113 §8.1); nothing of it reaches the gRPC
/// handler, whose RPC then ends as the stream closes. Frames pass through unchanged otherwise.
final class RequestSizeLimitHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let limits: RequestSizeLimits
    private var limit = Int.max
    private var method = "the request"
    private var sawRequestHeaders = false
    private var scanner = MessageLengthScanner()
    private var sentResponseHeaders = false
    /// The gRPC handler ended its response: what the client still sends is ignored, not checked.
    private var responseEnded = false
    private var rejected = false

    init(limits: RequestSizeLimits) { self.limits = limits }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !rejected else { return }
        switch unwrapInboundIn(data) {
        case .headers(let headers) where !sawRequestHeaders:
            sawRequestHeaders = true
            let path = headers.headers.first(name: ":path")
            limit = limits.limit(path: path)
            if let path, let slash = path.lastIndex(of: "/") { method = StrataError.echo(path[path.index(after: slash)...]) }
        case .data(let frame) where !responseEnded:
            if case .byteBuffer(let buffer) = frame.data, let size = scanner.firstLength(in: buffer, over: limit) {
                reject(context: context, size: size)
                return
            }
        default:
            break
        }
        context.fireChannelRead(data)
    }

    private func reject(context: ChannelHandlerContext, size: Int) {
        rejected = true
        var trailers = HPACKHeaders()
        if !sentResponseHeaders {
            trailers.add(name: ":status", value: "200")
            trailers.add(name: "content-type", value: "application/grpc")
        }
        trailers.add(name: "grpc-status", value: "8")
        let hint = switch method {
        case "FindMissingBlobs", "BatchReadBlobs": "; ask about fewer digests per request"
        case "BatchUpdateBlobs": "; upload large blobs with ByteStream"
        case "Write": "; send smaller chunks"
        default: ""
        }
        let message = "\(method) request message of \(size) bytes is larger than this server's limit of \(limit) bytes\(hint)"
        trailers.add(name: "grpc-message", value: Self.percentEncoded(message))
        context.write(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.rstStream(.noError)), promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // After the answer above, the stream is the client's no more: what the gRPC handler writes as
        // its RPC ends is dropped.
        guard !rejected else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if case .headers(let headers) = unwrapOutboundIn(data) {
            sentResponseHeaders = true
            if headers.endStream { responseEnded = true }
        }
        context.write(data, promise: promise)
    }

    /// grpc-message is percent-encoded: bytes outside printable ASCII, and '%'.
    static func percentEncoded(_ message: String) -> String {
        var out = ""
        for byte in message.utf8 {
            if byte >= 0x20 && byte <= 0x7E && byte != UInt8(ascii: "%") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

private extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// Follows the gRPC framing of a request stream (per message: a compressed flag byte, a 4-byte
/// big-endian length, the message) across DATA frames that may split it anywhere, even inside a prefix.
struct MessageLengthScanner {
    /// Bytes of the current message not yet seen.
    private var bodyRemaining = 0
    /// Bytes of the current prefix seen (0 to 4), and the length read so far.
    private var prefixSeen = 0
    private var length = 0

    /// Advances over `buffer`'s readable bytes; the length of the first message starting in them whose
    /// length is over `limit`, if any.
    mutating func firstLength(in buffer: ByteBuffer, over limit: Int) -> Int? {
        var index = buffer.readerIndex
        let end = buffer.writerIndex
        while index < end {
            if bodyRemaining > 0 {
                let skipped = min(bodyRemaining, end - index)
                bodyRemaining -= skipped
                index += skipped
                continue
            }
            let byte = Int(buffer.getInteger(at: index, as: UInt8.self) ?? 0)
            index += 1
            if prefixSeen == 0 {
                prefixSeen = 1  // the compressed flag
                continue
            }
            length = length << 8 | byte
            prefixSeen += 1
            if prefixSeen == 5 {
                let size = length
                prefixSeen = 0
                length = 0
                if size > limit { return size }
                bodyRemaining = size
            }
        }
        return nil
    }
}
