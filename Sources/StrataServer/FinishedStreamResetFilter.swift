import NIOCore

/// Keeps a client's RST_STREAM for a stream the server has already answered from counting towards the
/// HTTP/2 handler's reset-flood limit: on a stream closed on both sides it is dropped, on one the
/// client was still sending on it becomes an empty DATA frame with END_STREAM, which closes it alike.
///
/// swift-nio-http2 answers more than 200 RST_STREAM frames in 30 s on a connection with GOAWAY
/// ENHANCE_YOUR_CALM (the HTTP/2 "rapid reset" attack, CVE-2023-44487), and grpc-swift-nio-transport
/// does not let a server change that limit. A busy honest C-core client trips it: when the server
/// answers a ByteStream Write early (the blob is already stored) it resets the stream it is still
/// sending on, though the server finished it, so under load every call on the connection failed
/// UNAVAILABLE every few seconds. Such a reset cancels no work (RFC 9113 §5.1 has it ignored on a
/// closed stream); a reset of a stream the server is still working on (what an attacker sends,
/// opening and resetting streams in a loop) still reaches the HTTP/2 handler and its limit.
///
/// The filter sits before the HTTP/2 handler and reads only frame headers, in both directions: it
/// tracks which streams each side has ended, and forwards everything else as the same bytes (slices
/// of the buffers read, never copies of their payload).
final class FinishedStreamResetFilter: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// How many closed streams are remembered (at least): a reset for an older one passes on (and counts).
    static let closedStreamMemory = 4096
    /// A set of half-closed streams that grows past this is forgotten (its resets then count).
    static let halfClosedStreamMemory = 65536

    private static let data: UInt8 = 0x0
    private static let headers: UInt8 = 0x1
    private static let rstStream: UInt8 = 0x3
    private static let endStream: UInt8 = 0x1

    private var inbound = FrameHeaderReader(prefaceLength: 24)
    private var outbound = FrameHeaderReader(prefaceLength: 0)
    /// Streams the client ended (END_STREAM) while the server still answers.
    private var endedByClient: Set<UInt32> = []
    /// Streams the server ended (END_STREAM) while the client still sends.
    private var endedByServer: Set<UInt32> = []
    /// Streams closed on both sides or reset by the server: the latest, and the generation before.
    private var closed: Set<UInt32> = []
    private var closedBefore: Set<UInt32> = []

    init() {}

    /// Streams the client has finished sending on and the server has not yet ended: calls being worked
    /// on, whose answers are still to come (`LoopTickFlushCoalescer` waits a little for them).
    var answersOwed: Int { endedByClient.count }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        // Where the bytes still to forward begin: none while the rest of a dropped frame arrives.
        var forwardFrom = inbound.isDropping ? buffer.writerIndex : buffer.readerIndex
        inbound.scan(buffer) { event in
            switch event {
            case .header(let header, let start):
                let stream = header.streamID
                guard header.type == Self.rstStream, header.length == 4 else {
                    if header.type == Self.data || header.type == Self.headers, header.flags & Self.endStream != 0 {
                        clientEnded(stream)
                    }
                    return .forward
                }
                let replacement: ByteBuffer?
                if closed.contains(stream) || closedBefore.contains(stream) {
                    // Closed on both sides: nothing to do, and RFC 9113 §5.1 has it ignored.
                    replacement = nil
                    forgetClosed(stream)
                } else if endedByServer.remove(stream) != nil {
                    // The server has answered; the client stops sending. An empty DATA frame with
                    // END_STREAM closes the stream the same way (gRPC ignores what a client sends
                    // after the answer) without counting as a reset.
                    var endStream = context.channel.allocator.buffer(capacity: 9)
                    endStream.writeBytes([0, 0, 0, Self.data, Self.endStream])
                    endStream.writeInteger(stream)
                    replacement = endStream
                    remember(stream)
                } else {
                    // A stream the server still works on: the reset reaches the HTTP/2 handler, and counts.
                    endedByClient.remove(stream)
                    return .forward
                }
                // Forward what came before this frame; what arrived of it in an earlier read was held back.
                if start > forwardFrom, let before = buffer.getSlice(at: forwardFrom, length: start - forwardFrom) {
                    context.fireChannelRead(wrapInboundOut(before))
                }
                if let replacement { context.fireChannelRead(wrapInboundOut(replacement)) }
                forwardFrom = buffer.writerIndex
                return .drop
            case .resume(let index):
                forwardFrom = index
                return .forward
            case .heldBack(let bytes):
                // The start of a frame header at the end of a read, forwarded with the rest of the header.
                var held = context.channel.allocator.buffer(capacity: bytes.count)
                held.writeBytes(bytes)
                context.fireChannelRead(wrapInboundOut(held))
                return .forward
            case .holdFrom(let index):
                if index > forwardFrom, let before = buffer.getSlice(at: forwardFrom, length: index - forwardFrom) {
                    context.fireChannelRead(wrapInboundOut(before))
                }
                forwardFrom = buffer.writerIndex
                return .forward
            }
        }
        if buffer.writerIndex > forwardFrom, let rest = buffer.getSlice(at: forwardFrom, length: buffer.writerIndex - forwardFrom) {
            context.fireChannelRead(wrapInboundOut(rest))
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .byteBuffer(let buffer) = unwrapOutboundIn(data) {
            outbound.scan(buffer) { event in
                if case .header(let header, _) = event {
                    if header.type == Self.rstStream {
                        serverClosed(header.streamID)
                    } else if header.type == Self.data || header.type == Self.headers, header.flags & Self.endStream != 0 {
                        serverEnded(header.streamID)
                    }
                }
                return .forward
            }
        }
        context.write(data, promise: promise)
    }

    private func clientEnded(_ stream: UInt32) {
        if endedByServer.remove(stream) != nil {
            remember(stream)
        } else {
            insert(stream, into: &endedByClient)
        }
    }

    private func serverEnded(_ stream: UInt32) {
        if endedByClient.remove(stream) != nil {
            remember(stream)
        } else {
            insert(stream, into: &endedByServer)
        }
    }

    private func serverClosed(_ stream: UInt32) {
        endedByClient.remove(stream)
        endedByServer.remove(stream)
        remember(stream)
    }

    private func insert(_ stream: UInt32, into set: inout Set<UInt32>) {
        if set.count >= Self.halfClosedStreamMemory { set.removeAll() }
        set.insert(stream)
    }

    private func remember(_ stream: UInt32) {
        if closed.count >= Self.closedStreamMemory {
            closedBefore = closed
            closed = []
        }
        closed.insert(stream)
    }

    /// One reset per closed stream is dropped; a second one passes on (and counts).
    private func forgetClosed(_ stream: UInt32) {
        closed.remove(stream)
        closedBefore.remove(stream)
    }
}

/// Finds HTTP/2 frame headers in a byte stream read in pieces, skipping a client preface first.
struct FrameHeaderReader {
    struct Header {
        let length: Int
        let type: UInt8
        let flags: UInt8
        let streamID: UInt32
    }

    enum Event {
        /// A whole frame header, whose first byte is at `start` of this buffer (or before it, when it
        /// began in an earlier read: `start` is then the buffer's reader index).
        case header(Header, start: Int)
        /// A dropped frame has ended at `index`: forwarding resumes there.
        case resume(index: Int)
        /// The bytes of a header begun in an earlier read and held back, to be forwarded now.
        case heldBack([UInt8])
        /// A header (begun at `index` or in an earlier read) ends in a later read: hold back from `index`.
        case holdFrom(index: Int)
    }

    enum Decision {
        case forward
        case drop
    }

    private var prefaceRemaining: Int
    private var payloadRemaining = 0
    private var dropping = false
    private var partialHeader: [UInt8] = []

    init(prefaceLength: Int) { prefaceRemaining = prefaceLength }

    /// Whether the frame being read is being dropped: its remaining bytes are not to be forwarded.
    var isDropping: Bool { dropping }

    mutating func scan(_ buffer: ByteBuffer, _ decide: (Event) -> Decision) {
        var index = buffer.readerIndex
        let end = buffer.writerIndex
        while index < end {
            if prefaceRemaining > 0 {
                let count = min(prefaceRemaining, end - index)
                prefaceRemaining -= count
                index += count
                continue
            }
            if payloadRemaining > 0 {
                let count = min(payloadRemaining, end - index)
                payloadRemaining -= count
                index += count
                if payloadRemaining == 0 && dropping {
                    dropping = false
                    _ = decide(.resume(index: index))
                }
                continue
            }
            let needed = 9 - partialHeader.count
            guard end - index >= needed else {
                _ = decide(.holdFrom(index: index))
                partialHeader += buffer.getBytes(at: index, length: end - index) ?? []
                return
            }
            let heldBack = partialHeader
            let header: Header
            if heldBack.isEmpty, let length = buffer.getInteger(at: index, as: UInt32.self),
               let flags = buffer.getInteger(at: index + 4, as: UInt8.self),
               let streamID = buffer.getInteger(at: index + 5, as: UInt32.self) {
                // The usual case, a whole header in this read: read in place, nothing allocated.
                header = Header(length: Int(length >> 8), type: UInt8(length & 0xFF), flags: flags, streamID: streamID & 0x7FFF_FFFF)
            } else {
                let bytes = heldBack + (buffer.getBytes(at: index, length: needed) ?? [])
                header = Header(
                    length: Int(bytes[0]) << 16 | Int(bytes[1]) << 8 | Int(bytes[2]), type: bytes[3], flags: bytes[4],
                    streamID: (UInt32(bytes[5]) << 24 | UInt32(bytes[6]) << 16 | UInt32(bytes[7]) << 8 | UInt32(bytes[8])) & 0x7FFF_FFFF)
            }
            partialHeader = []
            let start = index
            index += needed
            payloadRemaining = header.length
            switch decide(.header(header, start: start)) {
            case .forward:
                if !heldBack.isEmpty { _ = decide(.heldBack(heldBack)) }
            case .drop:
                dropping = true
                if payloadRemaining == 0 {
                    dropping = false
                    _ = decide(.resume(index: index))
                }
            }
        }
    }
}
