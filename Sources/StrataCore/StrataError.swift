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

    /// Wraps any error as a StrataError, keeping one that already is.
    public static func from(_ error: any Error) -> StrataError {
        if let error = error as? StrataError { return error }
        if error is CancellationError { return .init(.cancelled, "the request was cancelled") }
        return .init(.internal, String(describing: error))
    }
}
