import GRPCCore
import StrataAPI
import StrataCore

typealias ProtoDigest = Build_Bazel_Remote_Execution_V2_Digest
typealias ProtoDigestFunction = Build_Bazel_Remote_Execution_V2_DigestFunction.Value
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

    var rpcStatus: RPCStatus {
        .with {
            $0.code = Int32(code.rawValue)
            $0.message = message
        }
    }
}

extension RPCStatus {
    static let ok = RPCStatus()
}

extension Digest {
    /// Validates a proto digest for `function`.
    init(_ proto: ProtoDigest, function: DigestFunction) throws(StrataError) {
        try self.init(hash: proto.hash, sizeBytes: proto.sizeBytes, function: function)
    }

    var proto: ProtoDigest {
        .with {
            $0.hash = hash
            $0.sizeBytes = sizeBytes
        }
    }
}

extension DigestFunction {
    /// The function of a request: its `digest_function` field, or inferred from its first digest.
    static func of(request value: ProtoDigestFunction, firstHash: String?) throws(StrataError) -> DigestFunction {
        try resolve(protoValue: value.rawValue, hash: firstHash)
    }

    var proto: ProtoDigestFunction { ProtoDigestFunction(rawValue: rawValue) ?? .unknown }
}
