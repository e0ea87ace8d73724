#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import NIOPosix
import StrataCore

/// Runs the jobs of the tasks that prefer it on one NIO event loop.
///
/// A listener's RPC handlers run on the same thread as its connections' I/O: a call then never waits
/// for another thread to wake up. With gRPC-Swift's default (I/O on NIO's threads, handlers on Swift's
/// cooperative pool) every call crossed threads at least twice, and in a VM each crossing is a futex
/// wake-up and an inter-processor interrupt: half of the server's CPU per call went there.
public final class EventLoopTaskExecutor: TaskExecutor, Sendable {
    let loop: any EventLoop

    public init(_ loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// One-thread event loops, one per core, shared by every listener (and `strata bench`'s client) of the
/// process as NIO's singleton group is: made on first use and never shut down. A loop stopped with its
/// server would still be asked to run the close callbacks of that server's channels released after it.
public enum SharedEventLoops {
    public static let shared: [MultiThreadedEventLoopGroup] = (0..<max(1, System.coreCount)).map { _ in
        MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }
}

/// Listening sockets for one TCP address, one per event loop, bound with SO_REUSEPORT so that the
/// kernel spreads connections across them.
///
/// Each socket is served by its own one-thread event loop, so a connection's I/O and its handlers share
/// a thread while the server still uses every core across connections. SO_REUSEPORT would also let a
/// second server bind the same port and silently take half the connections: an explicit port is first
/// bound once without it, which fails while anything (another Strata included) listens there. Only two
/// servers started at the same instant could both pass that probe.
enum ReusePortSockets {
    static func make(host: String, port: Int, count: Int) throws(StrataError) -> [Int] {
        let place = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        var address: NIOCore.SocketAddress
        do {
            address = try NIOCore.SocketAddress(ipAddress: host, port: port)
        } catch {
            throw .invalidArgument("cannot serve on \(place): \(host) is not an IP address")
        }
        var sockets: [CInt] = []
        do throws(StrataError) {
            if port != 0 {
                let probe = try bound(address, reusePort: false, place: place)
                close(probe)
            }
            while sockets.count < count {
                let socket = try bound(address, reusePort: true, place: place)
                sockets.append(socket)
                if address.port == 0 {
                    // The rest join the port the kernel picked for the first.
                    let picked = try boundPort(socket, place: place)
                    guard let joined = try? NIOCore.SocketAddress(ipAddress: host, port: picked) else {
                        throw .unavailable("cannot serve on \(place): the port the kernel picked (\(picked)) is unusable")
                    }
                    address = joined
                }
                guard listen(socket, SOMAXCONN) == 0 else { throw failure("listen", place: place) }
            }
        } catch {
            for socket in sockets { close(socket) }
            throw error
        }
        return sockets.map { Int($0) }
    }

    private static func bound(_ address: NIOCore.SocketAddress, reusePort: Bool, place: String) throws(StrataError) -> CInt {
        let family = address.protocol == .inet6 ? AF_INET6 : AF_INET
        #if canImport(Glibc)
        let socket = Glibc.socket(family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        #else
        let socket = Darwin.socket(family, SOCK_STREAM, 0)
        #endif
        guard socket >= 0 else { throw failure("socket", place: place) }
        var on: CInt = 1
        let size = socklen_t(MemoryLayout<CInt>.size)
        guard setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &on, size) == 0,
              !reusePort || setsockopt(socket, SOL_SOCKET, SO_REUSEPORT, &on, size) == 0
        else {
            let error = failure("setsockopt", place: place)
            close(socket)
            throw error
        }
        let result = address.withSockAddr { pointer, length in bind(socket, pointer, socklen_t(length)) }
        guard result == 0 else {
            let error = errno == EADDRINUSE
                ? StrataError.unavailable("cannot serve on \(place): the address is in use")
                : failure("bind", place: place)
            close(socket)
            throw error
        }
        return socket
    }

    private static func boundPort(_ socket: CInt, place: String) throws(StrataError) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) }
        }
        guard result == 0 else { throw failure("getsockname", place: place) }
        let bigEndianPort: UInt16 = withUnsafePointer(to: &storage) { pointer in
            if Int32(pointer.pointee.ss_family) == AF_INET6 {
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port }
            } else {
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port }
            }
        }
        return Int(UInt16(bigEndian: bigEndianPort))
    }

    private static func failure(_ call: String, place: String) -> StrataError {
        let code = errno
        return .unavailable("cannot serve on \(place): \(call) failed: \(String(cString: strerror(code)))")
    }
}
