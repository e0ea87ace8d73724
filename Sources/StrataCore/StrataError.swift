/// An error that carries the google.rpc.Code a client should see and a message saying what was wrong.
///
/// Storage, action caches and services throw this; the gRPC layer maps it one to one onto a status, so
/// the code chosen where the problem is found is the code the client gets.
public struct StrataError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The google.rpc.Code values (same numbers as gRPC status codes).
    public enum Code: Int, Sendable, Equatable, CaseIterable {
        case ok = 0
        case cancelled = 1
        case unknown = 2
        case invalidArgument = 3
        case deadlineExceeded = 4
        case notFound = 5
        case alreadyExists = 6
        case permissionDenied = 7
        case resourceExhausted = 8
        case failedPrecondition = 9
        case aborted = 10
        case outOfRange = 11
        case unimplemented = 12
        case `internal` = 13
        case unavailable = 14
        case dataLoss = 15
        case unauthenticated = 16
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }

    public static func invalidArgument(_ message: String) -> StrataError { .init(.invalidArgument, message) }
    public static func notFound(_ message: String) -> StrataError { .init(.notFound, message) }
    public static func outOfRange(_ message: String) -> StrataError { .init(.outOfRange, message) }
    public static func resourceExhausted(_ message: String) -> StrataError { .init(.resourceExhausted, message) }
    public static func failedPrecondition(_ message: String) -> StrataError { .init(.failedPrecondition, message) }
    public static func unimplemented(_ message: String) -> StrataError { .init(.unimplemented, message) }
    public static func unavailable(_ message: String) -> StrataError { .init(.unavailable, message) }
    public static func `internal`(_ message: String) -> StrataError { .init(.internal, message) }

    /// Client input (a resource name, a hash, a page token, an instance name…) as an error message
    /// echoes it: whole when it is short, else its first `limit` characters and its length in bytes.
    /// A status travels in a header, so a message echoing 64 KiB of input would itself exceed the
    /// metadata limit and the client would see RESOURCE_EXHAUSTED instead of the error; every message
    /// that repeats what a client sent goes through here.
    public static func echo(_ input: some StringProtocol, limit: Int = 200) -> String {
        let scalars = input.unicodeScalars
        guard input.utf8.count > limit, scalars.count > limit else { return String(input) }
        var head = String.UnicodeScalarView()
        head.append(contentsOf: scalars.prefix(limit))
        return "\(String(head))…(\(input.utf8.count) bytes)"
    }

    /// Wraps any error as a StrataError, keeping one that already is.
    public static func from(_ error: any Error) -> StrataError {
        if let error = error as? StrataError { return error }
        if error is CancellationError { return .init(.cancelled, "the request was cancelled") }
        return .init(.internal, String(describing: error))
    }
}
