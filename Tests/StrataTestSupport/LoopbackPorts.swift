import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A port on 127.0.0.1 that nothing listens on, held for as long as this object lives: the socket is
/// bound but never listens, so connections are refused, and no other process (a private server
/// another test starts) can take the port meanwhile, as it could with a port merely found free.
public final class ClosedLoopbackPort: @unchecked Sendable {
    public let port: Int
    private let fd: Int32

    public init() throws {
        (fd, port) = try bindLoopback()
    }

    deinit { close(fd) }
}

/// A port on 127.0.0.1 that was free a moment ago, for a private server a test starts.
public func freeLoopbackPort() throws -> Int {
    let (fd, port) = try bindLoopback()
    close(fd)
    return port
}

/// A socket of `type` (a TCP one by default; `SOCK_DGRAM` for a UDP receiver) bound to a free port on
/// 127.0.0.1, and the port.
public func bindLoopback(type: Int32 = Int32(SOCK_STREAM.rawValue)) throws -> (Int32, Int) {
    let fd = socket(AF_INET, type, 0)
    guard fd >= 0 else { throw MissingServiceError("socket() failed: errno \(errno)") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            bind(fd, raw, length) == 0 && getsockname(fd, raw, &length) == 0
        }
    }
    guard bound else {
        close(fd)
        throw MissingServiceError("bind() on 127.0.0.1 failed: errno \(errno)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// Runs blocking work (starting a server process and waiting for it) on a thread of its own: on
/// Swift's cooperative pool, which has one thread per core, it would stall every other test.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.start()
    }
}
