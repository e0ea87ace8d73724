import Foundation
import StrataCore
import StrataStorage
import Synchronization

/// A decorator for testing compositions: passes everything to `base` until `failing` is set, then
/// answers every call with `failure` (UNAVAILABLE unless set), as a backend that went down would. It
/// also counts calls, so a test can check which tier a composition asked, and how often.
public final class FaultyBlobStore: BlobStore {
    public let base: any BlobStore
    private let state = Mutex<(failing: Bool, calls: [String: Int])>((false, [:]))
    private let failureState = Mutex(StrataError.unavailable("test backend is down"))

    /// What a call answers while `failing`.
    public var failure: StrataError {
        get { failureState.withLock { $0 } }
        set { failureState.withLock { $0 = newValue } }
    }

    public init(_ base: any BlobStore) { self.base = base }

    public var failing: Bool {
        get { state.withLock { $0.failing } }
        set { state.withLock { $0.failing = newValue } }
    }

    public func calls(_ operation: String) -> Int { state.withLock { $0.calls[operation, default: 0] } }

    private func enter(_ operation: String) throws(StrataError) {
        let failing = state.withLock { state in
            state.calls[operation, default: 0] += 1
            return state.failing
        }
        if failing { throw failure }
    }

    public var maximumBlobSize: Int64? { base.maximumBlobSize }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        try enter("findMissing")
        return try await base.findMissing(digests)
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try enter("read")
        return try await base.read(digest, offset: offset, limit: limit)
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try enter("write")
        try await base.write(digest, body: body)
    }

    public func delete(_ digests: [Digest]) async throws {
        try enter("delete")
        try await base.delete(digests)
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        do { try enter("readBatch") } catch { return digests.map { _ in .failure(error) } }
        return await base.readBatch(digests)
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        do { try enter("writeBatch") } catch { return blobs.map { _ in .failure(error) } }
        return await base.writeBatch(blobs)
    }
}
