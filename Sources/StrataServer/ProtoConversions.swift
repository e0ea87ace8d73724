import GRPCCore
import StrataAPI
import StrataCore
import StrataProto

typealias RPCStatus = Google_Rpc_Status

extension StrataError: RPCErrorConvertible {
    public var rpcErrorCode: RPCError.Code {
        switch code {
        case .ok, .unknown: .unknown
        case .cancelled: .cancelled
        case .invalidArgument: .invalidArgument
        case .deadlineExceeded: .deadlineExceeded
        case .notFound: .notFound
        case .alreadyExists: .alreadyExists
        case .permissionDenied: .permissionDenied
        case .resourceExhausted: .resourceExhausted
        case .failedPrecondition: .failedPrecondition
        case .aborted: .aborted
        case .outOfRange: .outOfRange
        case .unimplemented: .unimplemented
        case .internal: .internalError
        case .unavailable: .unavailable
        case .dataLoss: .dataLoss
        case .unauthenticated: .unauthenticated
        }
    }

    public var rpcErrorMessage: String { message }
}

extension RPCStatus {
    static let ok = RPCStatus()
}


/// The one place where an error a handler throws becomes the status a client sees.
///
/// Services and stores throw `StrataError`s, which convert one to one; anything else (a
/// `CancellationError` from a cancelled task, an error of a library) would reach clients as UNKNOWN
/// "Service method threw an unknown error". This interceptor passes every such error, thrown by a
/// handler or by the producer of its response stream, through `StrataError.from`, so a cancellation is
/// CANCELLED and anything unexpected is INTERNAL with its description.
struct ErrorStatusInterceptor: ServerInterceptor {
    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        var response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            throw Self.status(error)
        }
        response.wrapProducer { producer in
            { writer in
                do {
                    return try await producer(writer)
                } catch {
                    throw Self.status(error)
                }
            }
        }
        return response
    }

    static func status(_ error: any Error) -> any Error {
        if error is RPCError || error is any RPCErrorConvertible { return error }
        return StrataError.from(error)
    }

    /// The status code and message a client gets for `error`: what the access log and metrics record.
    static func codeAndMessage(_ error: any Error) -> (code: RPCError.Code, message: String) {
        switch status(error) {
        case let error as RPCError: (error.code, error.message)
        case let error as any RPCErrorConvertible: (error.rpcErrorCode, error.rpcErrorMessage)
        default: (.unknown, "\(error)")
        }
    }
}

extension RPCError.Code {
    /// The code as the gRPC spec names it (`NOT_FOUND`), as grpcurl, Prometheus exporters and other
    /// servers' logs write it.
    var statusName: String {
        switch self {
        case .cancelled: "CANCELLED"
        case .unknown: "UNKNOWN"
        case .invalidArgument: "INVALID_ARGUMENT"
        case .deadlineExceeded: "DEADLINE_EXCEEDED"
        case .notFound: "NOT_FOUND"
        case .alreadyExists: "ALREADY_EXISTS"
        case .permissionDenied: "PERMISSION_DENIED"
        case .resourceExhausted: "RESOURCE_EXHAUSTED"
        case .failedPrecondition: "FAILED_PRECONDITION"
        case .aborted: "ABORTED"
        case .outOfRange: "OUT_OF_RANGE"
        case .unimplemented: "UNIMPLEMENTED"
        case .internalError: "INTERNAL"
        case .unavailable: "UNAVAILABLE"
        case .dataLoss: "DATA_LOSS"
        case .unauthenticated: "UNAUTHENTICATED"
        default: "\(rawValue)"
        }
    }
}
