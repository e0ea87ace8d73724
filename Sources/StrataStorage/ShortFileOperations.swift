import NIOCore
import NIOPosix
import Synchronization

/// Runs short file-system calls (open, read and close a small file from the page cache: a few µs) in
/// the caller's thread instead of a thread pool, unless the disk has lately been slow.
///
/// An RPC's task runs on its connection's event loop thread (`EventLoopTaskExecutor`). Handing a call
/// of a few µs to `NIOThreadPool` and back woke two threads (the pool's with a futex, then the loop's
/// with its eventfd): at one client, where every wake-up is a sleeping thread's, the hop cost more server
/// CPU than the file calls. A disk that blocks (a cold cache on a network volume, a stalled device)
/// would hold up every connection of the loop, so a call that takes longer than `slowCall` sends every
/// call for the next `poolPeriod` to the pool, as before; the one slow call is the price of finding out.
/// Calls that write and flush (fsync) always belong on the pool: they are not short.
public final class ShortFileOperations: Sendable {
    public let pool: NIOThreadPool
    public let slowCall: TimeAmount
    public let poolPeriod: TimeAmount
    /// Until when (`NIODeadline` uptime nanoseconds) calls go to the pool.
    private let poolUntil = Atomic<UInt64>(0)

    public init(pool: NIOThreadPool = .singleton, slowCall: TimeAmount = .milliseconds(2), poolPeriod: TimeAmount = .seconds(10)) {
        self.pool = pool
        self.slowCall = slowCall
        self.poolPeriod = poolPeriod
    }

    /// Whether calls run in the caller's thread now (false for `poolPeriod` after a slow one).
    public var inline: Bool { NIODeadline.now().uptimeNanoseconds >= poolUntil.load(ordering: .relaxed) }

    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        let start = NIODeadline.now()
        guard start.uptimeNanoseconds >= poolUntil.load(ordering: .relaxed) else {
            return try await pool.runIfActive(body)
        }
        let result = Result { try body() }
        let end = NIODeadline.now()
        if end - start > slowCall {
            poolUntil.store((end + poolPeriod).uptimeNanoseconds, ordering: .relaxed)
        }
        return try result.get()
    }
}
