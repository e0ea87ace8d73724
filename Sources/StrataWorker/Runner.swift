import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import SwiftProtobuf

typealias Action = Build_Bazel_Remote_Execution_V2_Action
typealias ExecutedActionMetadata = Build_Bazel_Remote_Execution_V2_ExecutedActionMetadata

/// One action a lease asks for, as a runner gets it.
public struct RunnerJob: Sendable {
    public var actionDigest: Digest
    public var action: Build_Bazel_Remote_Execution_V2_Action
    /// `Action.timeout`; nil when it sets none.
    public var timeout: Duration?
    /// A new, empty directory of the worker's for this action only; removed afterwards.
    public var directory: String

    public init(actionDigest: Digest, action: Build_Bazel_Remote_Execution_V2_Action, timeout: Duration?, directory: String) {
        self.actionDigest = actionDigest
        self.action = action
        self.timeout = timeout
        self.directory = directory
    }
}

/// What a runner answers: the ActionResult (outputs uploaded) and the lease's status: OK when the
/// command ran (whatever its exit code), DEADLINE_EXCEEDED when its timeout killed it (with whatever
/// output it produced).
public struct RunnerOutcome: Sendable {
    public var result: Build_Bazel_Remote_Execution_V2_ActionResult
    public var status: Google_Rpc_Status
}

/// How an action is run, as Buildbarn splits the worker (sessions, leases, the CAS) from the runner.
/// Cancelling the task that runs `run` kills the command's process group.
public protocol Runner: Sendable {
    /// `--runner`'s name.
    var name: String { get }
    func run(_ job: RunnerJob) async throws -> RunnerOutcome
}

/// The worker's CAS client and input cache: what the host runner stages inputs and uploads outputs
/// with, and what the bot reads the Actions leases name by digest from.
public struct RunnerContext: Sendable {
    public let store: RemoteBlobStore
    public let cache: InputCache

    public init(store: RemoteBlobStore, cache: InputCache) {
        self.store = store
        self.cache = cache
    }

    /// A message from the CAS, checked against its digest.
    func message<M: SwiftProtobuf.Message>(_ type: M.Type, _ digest: Digest, what: String) async throws -> M {
        let data: Data
        do {
            data = try await store.readAll(digest)
        } catch let error as StrataError where error.code == .notFound {
            throw MissingInputs([digest])
        }
        try digest.verify(data)
        do {
            return try M(serializedBytes: data)
        } catch {
            throw StrataError.invalidArgument("\(what) \(digest) is not a \(M.protoMessageName) message: \(error)")
        }
    }
}

extension Google_Protobuf_Timestamp {
    static var now: Google_Protobuf_Timestamp { Google_Protobuf_Timestamp(date: Date()) }
}
