import NIOCore

/// Merges the flushes a connection asks for during one turn of its event loop into one, done at the end
/// of that turn, without a timer: the server's replacement for grpc-swift-nio-transport's flush
/// coalescing.
///
/// The transport's default coalescing delays every flush by up to 100 µs on a timer. Under load that
/// merges the answers of many calls into one `writev`, but a client making one call at a time (how
/// most developers' Bazel uses a cache) got each answer late, and the server paid for it: the loop armed
/// the timer (`timerfd_settime`), went to sleep, woke up 100 µs later only to flush, and re-armed its
/// idle timer (two `epoll_wait`s, two `timerfd_settime`s and a timer read per call, measured with
/// `strace`). An empty call at one client cost 251 µs of server CPU against 98 µs under load.
///
/// Here a flush is put off only until the tasks the loop is running now have run (`execute` from the
/// loop's own thread queues the flush behind them and wakes nobody): the answers of every RPC handler job
/// that ran in the same turn, and the frames the HTTP/2 handler writes for them, go out in one `writev`,
/// and an answer is never held waiting for a clock. The handler sits next to the socket, after TLS, so
/// it holds back bytes the connection's other handlers have finished with.
final class LoopTickFlushCoalescer: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    /// A flush was asked for and is queued to run at the end of the loop's turn.
    private var flushQueued = false
    /// Set while the handler is in a pipeline: a queued flush finds it gone after removal.
    private var context: ChannelHandlerContext?

    init() {}

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        // A flush asked for before removal still happens: the bytes must not wait for another flush.
        if flushQueued {
            flushQueued = false
            context.flush()
        }
    }

    func flush(context: ChannelHandlerContext) {
        guard !flushQueued else { return }
        flushQueued = true
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute { handler.value.flushQueuedBytes() }
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

    private func flushQueuedBytes() {
        guard let context else { return }
        flushNow(context: context)
    }

    private func flushNow(context: ChannelHandlerContext) {
        guard flushQueued else { return }
        flushQueued = false
        context.flush()
    }
}
