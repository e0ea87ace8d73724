import NIOCore

/// Merges a connection's flushes: at the end of the event loop's turn when no other call on the
/// connection still owes an answer, within `maxDelay` (on a timer) when some do. The server's
/// replacement for grpc-swift-nio-transport's flush coalescing.
///
/// The transport's coalescing delays every flush by up to 100 µs on a timer. Under load that merges the
/// answers of several calls into one `writev` (rpc-floor and FindMissingBlobs at 4 in flight cost 6-8%
/// more server CPU per call when every turn flushed at once). But a client making one call at a time
/// (how most developers' Bazel uses a cache) got each answer late, and the server paid for it: the loop
/// armed the timer (`timerfd_settime`), slept, woke up 100 µs later only to flush, and re-armed its idle
/// timer (two `epoll_wait`s, two `timerfd_settime`s and a timer read per call, measured with `strace`):
/// an empty call at one client cost 242 µs of server CPU against 99 µs under load.
///
/// So a flush first waits for the end of the loop's turn (`execute` from the loop's own thread queues it
/// behind the jobs running now and wakes nobody): the answers of every RPC job of the turn go out in one
/// `writev`. Then, if no call of the connection still owes an answer (`answersOwed`, counted from the
/// HTTP/2 frames by `FinishedStreamResetFilter`), it happens at once; otherwise more answers are coming
/// and it waits for them, `maxDelay` at most, as the transport's did. `maxBytes` unflushed, an unwritable
/// channel or a close flush at once.
final class LoopTickFlushCoalescer: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    private let answersOwed: () -> Int
    private let maxDelay: TimeAmount
    private let maxBytes: Int

    /// A flush was asked for and has not been passed on.
    private var flushRequested = false
    /// The end-of-turn check is queued.
    private var turnEndQueued = false
    private var timer: Scheduled<Void>?
    /// Bytes written since the last flush passed on.
    private var unflushedBytes = 0
    /// Set while the handler is in a pipeline: a queued check finds it gone after removal.
    private var context: ChannelHandlerContext?

    /// `answersOwed`: how many calls of the connection still owe an answer (0: nothing to wait for).
    init(answersOwed: @escaping () -> Int = { 0 }, maxDelay: TimeAmount = .microseconds(100), maxBytes: Int = 64 << 10) {
        self.answersOwed = answersOwed
        self.maxDelay = maxDelay
        self.maxBytes = maxBytes
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        // A flush asked for before removal still happens: the bytes must not wait for another flush.
        flushNow(context: context)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        unflushedBytes += unwrapOutboundIn(data).readableBytes
        context.write(data, promise: promise)
        if flushRequested && unflushedBytes >= maxBytes { flushNow(context: context) }
    }

    func flush(context: ChannelHandlerContext) {
        flushRequested = true
        if unflushedBytes >= maxBytes {
            flushNow(context: context)
            return
        }
        guard !turnEndQueued else { return }
        turnEndQueued = true
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute { handler.value.turnEnded() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Past the high-water mark the writers wait for writability, which only the flush brings back.
        if !context.channel.isWritable { flushNow(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // The last frames (a GOAWAY, an answer's trailers) go out before the socket closes.
        flushNow(context: context)
        context.close(mode: mode, promise: promise)
    }

    private func turnEnded() {
        turnEndQueued = false
        guard let context, flushRequested else { return }
        guard answersOwed() > 0 else {
            flushNow(context: context)
            return
        }
        guard timer == nil else { return }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: maxDelay) {
            handler.value.timer = nil
            if let context = handler.value.context { handler.value.flushNow(context: context) }
        }
    }

    private func flushNow(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        guard flushRequested else { return }
        flushRequested = false
        unflushedBytes = 0
        context.flush()
    }
}
