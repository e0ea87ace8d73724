import NIOCore
import NIOEmbedded
@testable import StrataServer
import Testing

/// Counts the flushes that reach the socket side of the pipeline.
private final class FlushCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var flushes = 0

    func flush(context: ChannelHandlerContext) {
        flushes += 1
        context.flush()
    }
}

private func bytes(_ channel: EmbeddedChannel, _ text: String) -> ByteBuffer {
    channel.allocator.buffer(string: text)
}

private func sent(_ channel: EmbeddedChannel) throws -> String {
    var text = ""
    while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
    return text
}

@Suite struct LoopTickFlushCoalescerTests {
    /// Three answers flushed by jobs of one turn of the loop go out in one flush once the jobs have run,
    /// with no clock advanced: nothing waits for a timer (the transport's coalescing held each flush for
    /// 100 µs on one, a second wake-up of the loop per call at one client).
    @Test func flushesOfOneTurnGoOutTogetherWithoutATimer() throws {
        let counter = FlushCounter()
        let channel = EmbeddedChannel(handlers: [counter, LoopTickFlushCoalescer()])
        for answer in ["a", "b", "c"] {
            channel.write(bytes(channel, answer), promise: nil)
            channel.flush()
        }
        #expect(try sent(channel) == "")
        #expect(counter.flushes == 0)
        channel.embeddedEventLoop.run()
        #expect(try sent(channel) == "abc")
        #expect(counter.flushes == 1)

        // The next turn's flush is its own.
        channel.writeAndFlush(bytes(channel, "d"), promise: nil)
        channel.embeddedEventLoop.run()
        #expect(try sent(channel) == "d")
        #expect(counter.flushes == 2)
        _ = try channel.finish()
    }

    /// Bytes written and flushed just before a close (a GOAWAY, an answer's trailers) are sent before
    /// the socket closes, not dropped with the queued flush.
    @Test func closeSendsWhatWasFlushed() throws {
        let channel = EmbeddedChannel(handler: LoopTickFlushCoalescer())
        channel.writeAndFlush(bytes(channel, "last frames"), promise: nil)
        channel.close(promise: nil)
        #expect(try sent(channel) == "last frames")
        channel.embeddedEventLoop.run()
    }

    /// Past the high-water mark writers wait for the channel to become writable again, which only a
    /// flush brings: it happens at once rather than at the end of the turn.
    @Test func unwritableChannelFlushesAtOnce() throws {
        let counter = FlushCounter()
        let channel = EmbeddedChannel(handlers: [counter, LoopTickFlushCoalescer()])
        channel.writeAndFlush(bytes(channel, "big"), promise: nil)
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(counter.flushes == 1)
        #expect(try sent(channel) == "big")
        channel.embeddedEventLoop.run()
        #expect(counter.flushes == 1)
        _ = try channel.finish()
    }

    /// Removed with a flush queued (the pipeline torn down mid-turn), the bytes still go out.
    @Test func removalSendsWhatWasFlushed() throws {
        let coalescer = LoopTickFlushCoalescer()
        let channel = EmbeddedChannel(handler: coalescer)
        channel.writeAndFlush(bytes(channel, "pending"), promise: nil)
        try channel.pipeline.syncOperations.removeHandler(coalescer).wait()
        #expect(try sent(channel) == "pending")
        channel.embeddedEventLoop.run()
        _ = try channel.finish()
    }
}

/// A connection with calls still being worked on.
private final class OwedAnswers: @unchecked Sendable {
    var count = 0
}

@Suite struct LoopTickFlushCoalescerWaitingTests {
    /// While other calls owe answers, a flush waits for them (the timer, `maxDelay` at most) rather
    /// than going out at the end of the turn; once none is owed, the next turn's end flushes everything.
    @Test func waitsForOwedAnswersAtMostMaxDelay() throws {
        let owed = OwedAnswers()
        let counter = FlushCounter()
        let channel = EmbeddedChannel(handlers: [
            counter, LoopTickFlushCoalescer(answersOwed: { owed.count }, maxDelay: .microseconds(100)),
        ])
        owed.count = 3
        channel.writeAndFlush(bytes(channel, "a"), promise: nil)
        channel.embeddedEventLoop.run()
        #expect(try sent(channel) == "")
        channel.embeddedEventLoop.advanceTime(by: .microseconds(99))
        #expect(try sent(channel) == "")
        channel.embeddedEventLoop.advanceTime(by: .microseconds(1))
        #expect(try sent(channel) == "a")
        #expect(counter.flushes == 1)

        // The last owed answer arrives: it and the one before it leave at the end of its turn.
        channel.writeAndFlush(bytes(channel, "b"), promise: nil)
        channel.embeddedEventLoop.run()
        owed.count = 0
        channel.writeAndFlush(bytes(channel, "c"), promise: nil)
        channel.embeddedEventLoop.run()
        #expect(try sent(channel) == "bc")
        #expect(counter.flushes == 2)
        _ = try channel.finish()
    }

    /// `maxBytes` unflushed go out at once, whatever is owed.
    @Test func manyBytesGoOutAtOnce() throws {
        let counter = FlushCounter()
        let channel = EmbeddedChannel(handlers: [counter, LoopTickFlushCoalescer(answersOwed: { 5 }, maxBytes: 8)])
        channel.writeAndFlush(bytes(channel, "0123456789"), promise: nil)
        #expect(try sent(channel) == "0123456789")
        #expect(counter.flushes == 1)
        channel.embeddedEventLoop.run()
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(counter.flushes == 1)
        _ = try channel.finish()
    }
}
