import NIOCore
import NIOEmbedded
@testable import StrataServer
import Testing

/// The bytes of one HTTP/2 frame.
private func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32, payload: [UInt8] = []) -> [UInt8] {
    let length = payload.count
    return [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type, flags,
            UInt8(stream >> 24), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)] + payload
}

private let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
private func reset(_ stream: UInt32) -> [UInt8] { frame(type: 3, stream: stream, payload: [0, 0, 0, 8]) }

/// What the HTTP/2 handler behind the filter receives when the client sends `inbound` in the pieces
/// `cuts` makes, after the server sent `outbound`.
private func filtered(outbound: [UInt8], inbound: [UInt8], cuts: [Int]) throws -> [UInt8] {
    let channel = EmbeddedChannel(handler: FinishedStreamResetFilter())
    var out = channel.allocator.buffer(capacity: outbound.count)
    out.writeBytes(outbound)
    try channel.writeAndFlush(out).wait()
    var start = 0
    for end in cuts + [inbound.count] where end > start {
        var piece = channel.allocator.buffer(capacity: end - start)
        piece.writeBytes(inbound[start..<end])
        try channel.writeInbound(piece)
        start = end
    }
    var received: [UInt8] = []
    while let buffer = try channel.readInbound(as: ByteBuffer.self) { received += buffer.readableBytesView }
    _ = try channel.finish()
    return received
}

@Suite struct FinishedStreamResetFilterTests {
    /// The server answered streams 1 and 3 (END_STREAM); the client had ended 3 but was still sending
    /// on 1, and resets 1, 3 and 5, which the server still works on. However the bytes are cut into
    /// reads: 1's reset becomes END_STREAM, 3's is dropped, 5's passes on, and every other byte is
    /// forwarded as sent.
    @Test func resetsOfAnsweredStreamsDoNotReachTheHTTP2Handler() throws {
        let outbound = frame(type: 4, stream: 0) // SETTINGS
            + frame(type: 1, flags: 0x5, stream: 1, payload: [1, 2, 3])
            + frame(type: 1, flags: 0x4, stream: 3, payload: [4])
            + frame(type: 0, flags: 0x1, stream: 3, payload: [5, 6])
        let before = preface
            + frame(type: 1, flags: 0x4, stream: 1, payload: [7, 7, 7])
            + frame(type: 1, flags: 0x5, stream: 3, payload: [8])
            + frame(type: 1, flags: 0x4, stream: 5, payload: [9])
            + frame(type: 0, stream: 1, payload: Array(repeating: 1, count: 20))
        let inbound = before + reset(1) + reset(3) + reset(5) + frame(type: 0, stream: 5, payload: [2, 2])
        let expected = before + frame(type: 0, flags: 0x1, stream: 1) + reset(5) + frame(type: 0, stream: 5, payload: [2, 2])
        #expect(try filtered(outbound: outbound, inbound: inbound, cuts: []) == expected)
        for first in 1..<inbound.count {
            for second in stride(from: first + 1, to: inbound.count, by: 7) {
                #expect(try filtered(outbound: outbound, inbound: inbound, cuts: [first, second]) == expected, "cut at \(first), \(second)")
            }
        }
    }

    /// A second reset of a stream passes on: only the one that closes it is spared.
    @Test func aRepeatedResetPassesOn() throws {
        let outbound = frame(type: 1, flags: 0x5, stream: 1)
        let inbound = preface + frame(type: 1, flags: 0x5, stream: 1) + reset(1) + reset(1)
        #expect(try filtered(outbound: outbound, inbound: inbound, cuts: []) == preface + frame(type: 1, flags: 0x5, stream: 1) + reset(1))
    }

    /// The calls still owing an answer (what `LoopTickFlushCoalescer` waits for): a stream counts once
    /// the client has ended it, until the server ends or resets it or the client resets it.
    @Test func countsTheAnswersOwed() throws {
        let filter = FinishedStreamResetFilter()
        let channel = EmbeddedChannel(handler: filter)
        func receive(_ bytes: [UInt8]) throws {
            var buffer = channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            try channel.writeInbound(buffer)
        }
        func send(_ bytes: [UInt8]) throws {
            var buffer = channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            try channel.writeAndFlush(buffer).wait()
        }
        try receive(preface + frame(type: 1, flags: 0x4, stream: 1) + frame(type: 0, flags: 0x1, stream: 1, payload: [1]))
        try receive(frame(type: 1, flags: 0x5, stream: 3) + frame(type: 1, flags: 0x5, stream: 5) + frame(type: 1, flags: 0x4, stream: 7))
        #expect(filter.answersOwed == 3) // 1, 3 and 5; 7 is still sending
        try send(frame(type: 1, flags: 0x4, stream: 1) + frame(type: 0, stream: 1, payload: [2]))
        #expect(filter.answersOwed == 3) // 1's answer has begun, not ended
        try send(frame(type: 1, flags: 0x5, stream: 1))
        #expect(filter.answersOwed == 2)
        try send(reset(3))
        try receive(reset(5))
        #expect(filter.answersOwed == 0)
        _ = try channel.finish()
    }
}
