import GRPCCore
import StrataAPI
import StrataActionCache
import StrataCore
import StrataProto
import SwiftProtobuf

public struct ActionCacheService: Build_Bazel_Remote_Execution_V2_ActionCache.SimpleServiceProtocol {
    let registry: InstanceRegistry

    public init(registry: InstanceRegistry) { self.registry = registry }

    public func getActionResult(
        request: Build_Bazel_Remote_Execution_V2_GetActionResultRequest, context: ServerContext
    ) async throws -> ActionResult {
        let cache = try registry.actionCache(request.instanceName)
        let function = try DigestFunction.of(request: request.digestFunction, firstHash: request.actionDigest.hash)
        let action = try Digest(request.actionDigest, function: function)
        guard let result = try await cache.get(action) else {
            throw StrataError.notFound("no cached result for action \(action)")
        }
        RequestContext.current?.addSent(Self.payloadBytes(result))
        return result
    }

    public func updateActionResult(
        request: Build_Bazel_Remote_Execution_V2_UpdateActionResultRequest, context: ServerContext
    ) async throws -> ActionResult {
        let cache = try registry.actionCache(request.instanceName)
        let function = try DigestFunction.of(request: request.digestFunction, firstHash: request.actionDigest.hash)
        let action = try Digest(request.actionDigest, function: function)
        guard request.hasActionResult else {
            throw StrataError.invalidArgument("UpdateActionResult for action \(action) carries no action_result")
        }
        try Self.validate(request.actionResult, function: function)
        RequestContext.current?.addReceived(Self.payloadBytes(request.actionResult))
        try await cache.update(action, request.actionResult)
        return request.actionResult
    }

    /// The size of an ActionResult on the wire: the action cache's payload, for the byte metrics.
    static func payloadBytes(_ result: ActionResult) -> Int {
        ((try? result.serializedBytes()) as [UInt8]?)?.count ?? 0
    }

    /// Every digest an ActionResult references must be well formed, or a later hit would hand clients
    /// digests they cannot fetch.
    public static func validate(_ result: ActionResult, function: DigestFunction) throws(StrataError) {
        func check(_ digest: ProtoDigest, _ what: @autoclosure () -> String) throws(StrataError) {
            do {
                _ = try Digest(digest, function: function)
            } catch {
                throw .invalidArgument("action_result: \(what()): \(error.message)")
            }
        }
        for file in result.outputFiles {
            guard !file.path.isEmpty else { throw .invalidArgument("action_result: an output file has an empty path") }
            try check(file.digest, "output file \(StrataError.echo(file.path))")
            if !file.contents.isEmpty && Int64(file.contents.count) != file.digest.sizeBytes {
                throw .invalidArgument("action_result: output file \(StrataError.echo(file.path)): inlined contents do not match its digest's size")
            }
        }
        for directory in result.outputDirectories {
            if directory.hasTreeDigest { try check(directory.treeDigest, "output directory \(StrataError.echo(directory.path)) tree_digest") }
            if directory.hasRootDirectoryDigest {
                try check(directory.rootDirectoryDigest, "output directory \(StrataError.echo(directory.path)) root_directory_digest")
            }
            if !directory.hasTreeDigest && !directory.hasRootDirectoryDigest {
                throw .invalidArgument("action_result: output directory \(StrataError.echo(directory.path)) has neither tree_digest nor root_directory_digest")
            }
        }
        if result.hasStdoutDigest { try check(result.stdoutDigest, "stdout_digest") }
        if result.hasStderrDigest { try check(result.stderrDigest, "stderr_digest") }
        for symlink in result.outputSymlinks + result.outputFileSymlinks + result.outputDirectorySymlinks
        where symlink.path.isEmpty || symlink.target.isEmpty {
            throw .invalidArgument("action_result: an output symlink has an empty path or target")
        }
    }
}
