import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import StrataAPI
import StrataActionCache
import StrataCore

typealias ActionCacheClient = Build_Bazel_Remote_Execution_V2_ActionCache.Client<HTTP2ClientTransport.Posix>

/// Another REAPI server's ActionCache. Gets are retried on transient errors like the remote
/// storage's calls; updates too (an update is idempotent: it stores the same result again).
/// The remote checks completeness against its own CAS; `remove` is UNIMPLEMENTED (the REAPI has no
/// such call), so a stale entry is dropped by the remote's own check.
public final class RemoteActionCache: ActionCache {
    public let channel: RemoteChannel

    public init(url: String, options: RemoteChannel.Options = .init()) throws(StrataError) {
        self.channel = try RemoteChannel(url: url, options: options)
    }

    /// A cache on a channel shared with others (a client command's CAS).
    public init(channel: RemoteChannel) {
        self.channel = channel
    }

    public var endpoint: String { "\(channel.endpoint)" }

    public func get(_ action: Digest) async throws -> ActionResult? {
        do {
            return try await channel.call("GetActionResult") { client in
                try await ActionCacheClient(wrapping: client).getActionResult(.with {
                    $0.instanceName = self.channel.options.instanceName
                    $0.actionDigest = action.proto
                    $0.digestFunction = action.function.proto
                }, options: self.channel.callOptions)
            }
        } catch let error as StrataError where error.code == .notFound {
            return nil
        }
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        _ = try await channel.call("UpdateActionResult") { client in
            try await ActionCacheClient(wrapping: client).updateActionResult(.with {
                $0.instanceName = self.channel.options.instanceName
                $0.actionDigest = action.proto
                $0.actionResult = result
                $0.digestFunction = action.function.proto
            }, options: self.channel.callOptions)
        }
    }

    public func remove(_ action: Digest) async throws {
        throw StrataError.unimplemented("remote action cache \(endpoint): the Remote Execution API cannot remove an entry")
    }
}
