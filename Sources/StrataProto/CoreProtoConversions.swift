import StrataAPI
import StrataCore

/// The one conversion between Strata's core types and their REAPI messages, shared by the server, the
/// remote clients, the scheduler and the worker.
public typealias ProtoDigest = Build_Bazel_Remote_Execution_V2_Digest
public typealias ProtoDigestFunction = Build_Bazel_Remote_Execution_V2_DigestFunction.Value

extension Digest {
    /// Validates a proto digest for `function`.
    public init(_ proto: ProtoDigest, function: DigestFunction) throws(StrataError) {
        try self.init(hash: proto.hash, sizeBytes: proto.sizeBytes, function: function)
    }

    public var proto: ProtoDigest {
        .with {
            $0.hash = hash
            $0.sizeBytes = sizeBytes
        }
    }
}

extension DigestFunction {
    /// The request field's value for this function.
    public var proto: ProtoDigestFunction { ProtoDigestFunction(rawValue: rawValue) ?? .unknown }

    /// The function of a request: its `digest_function` field, or inferred from its first digest.
    public static func of(request value: ProtoDigestFunction, firstHash: String?) throws(StrataError) -> DigestFunction {
        try resolve(protoValue: value.rawValue, hash: firstHash)
    }
}

extension StrataError {
    /// The google.rpc.Status a response carries for this error (ExecuteResponse.status, batch answers).
    public var rpcStatus: Google_Rpc_Status {
        .with {
            $0.code = Int32(code.rawValue)
            $0.message = message
        }
    }
}

extension ClientRequestMetadata {
    /// What a client's `requestmetadata-bin` header says.
    public init(_ proto: Build_Bazel_Remote_Execution_V2_RequestMetadata) {
        self.init()
        toolName = proto.toolDetails.toolName
        toolVersion = proto.toolDetails.toolVersion
        actionID = proto.actionID
        toolInvocationID = proto.toolInvocationID
        correlatedInvocationsID = proto.correlatedInvocationsID
        actionMnemonic = proto.actionMnemonic
        targetID = proto.targetID
        configurationID = proto.configurationID
    }

    /// The `requestmetadata-bin` message passing this metadata on.
    public var proto: Build_Bazel_Remote_Execution_V2_RequestMetadata {
        .with {
            $0.toolDetails.toolName = toolName
            $0.toolDetails.toolVersion = toolVersion
            $0.actionID = actionID
            $0.toolInvocationID = toolInvocationID
            $0.correlatedInvocationsID = correlatedInvocationsID
            $0.actionMnemonic = actionMnemonic
            $0.targetID = targetID
            $0.configurationID = configurationID
        }
    }
}
