import Foundation
import StrataCore
import StrataStorage
import Synchronization

/// ByteStream uploads in progress, so that a Write whose stream broke can be resumed.
///
/// Each upload streams straight into its store through a `ChunkHandOff`: no spool file, no extra copy,
/// at most one chunk in flight, and a committed size that counts only the chunks the store took. When
/// a client's stream ends before `finish_write`, the upload is parked with its store write still open;
/// a later Write of the same resource name at `write_offset` = committed size continues it, and
/// QueryWriteStatus reports its committed size. A parked upload that nobody resumes within
/// `idleTimeout` is abandoned: its store write fails and leaves nothing behind.
public final class UploadRegistry: Sendable {
    public let idleTimeout: Duration
    private let uploads = Mutex<[String: Upload]>([:])

    public init(idleTimeout: Duration = .seconds(60)) {
        self.idleTimeout = idleTimeout
    }

    final class Upload: Sendable {
        struct State {
            var committed: Int64 = 0
            var attached = true
            var parkedAt: ContinuousClock.Instant?
            var storeFinished = false
        }

        /// A reference to the state, so the store task can share it.
        final class Shared: Sendable {
            let state = Mutex(State())
        }

        let key: String
        let digest: Digest
        let chunks = ChunkHandOff()
        let shared = Shared()
        let storeWrite: Task<Void, any Error>

        func withState<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
            try shared.state.withLock { (state: inout State) throws(E) -> T in try body(&state) }
        }

        /// `compressor`: how the client compresses the chunks; the store gets them decompressed.
        init(key: String, digest: Digest, store: any BlobStore, compressor: BlobCompressor) {
            self.key = key
            self.digest = digest
            let chunks = self.chunks
            let shared = self.shared
            storeWrite = Task {
                // Finishing the channel releases a sender blocked on a store that stopped reading early
                // (it found the blob already stored).
                defer {
                    shared.state.withLock { $0.storeFinished = true }
                    chunks.finish()
                }
                let received = BlobBody { BlobBody.AsyncIterator { try await chunks.next() } }
                try await store.write(digest, body: compressor.decompressing(received, for: digest))
            }
        }

        var committed: Int64 { shared.state.withLock { $0.committed } }
        var storeFinished: Bool { shared.state.withLock { $0.storeFinished } }

        func abandon(_ reason: String) {
            chunks.fail(StrataError(.aborted, reason))
            storeWrite.cancel()
        }
    }

    enum Claim {
        case started(Upload)
        case resumed(Upload)
    }

    /// The digest's function is part of the key: a BLAKE3 upload is never resumed as the SHA-256 blob
    /// with the same hex. The compressor is too: offsets of a compressed upload count other bytes than
    /// an uncompressed one's of the same blob and upload id.
    static func key(_ name: ResourceName) -> String {
        "\(name.instanceName)\u{0}\(name.uploadID ?? "")\u{0}\(name.compressor ?? "identity")\u{0}\(name.digest.storageName)"
    }

    /// Starts an upload, or takes over a parked one. Throws when another stream is writing it or when
    /// `writeOffset` is not where the upload stands.
    func claim(
        _ name: ResourceName, writeOffset: Int64, store: any BlobStore, compressor: BlobCompressor
    ) throws(StrataError) -> Claim {
        let key = Self.key(name)
        return try uploads.withLock { uploads throws(StrataError) -> Claim in
            if let upload = uploads[key] {
                try upload.withState { state throws(StrataError) in
                    guard !state.attached else {
                        throw StrataError(.aborted, "upload \(StrataError.echo(name.uploadID ?? "")) of \(name.digest) is being written by another stream")
                    }
                    guard writeOffset == state.committed else {
                        throw .invalidArgument(
                            "write_offset \(writeOffset) does not continue upload \(StrataError.echo(name.uploadID ?? "")): \(state.committed) bytes are committed; resume at \(state.committed)")
                    }
                    state.attached = true
                    state.parkedAt = nil
                }
                return .resumed(upload)
            }
            guard writeOffset == 0 else {
                throw .invalidArgument(
                    "write_offset \(writeOffset): no upload \(StrataError.echo(name.uploadID ?? "")) of \(name.digest) is in progress; start at write_offset 0")
            }
            let upload = Upload(key: key, digest: name.digest, store: store, compressor: compressor)
            uploads[key] = upload
            return .started(upload)
        }
    }

    /// The committed size of an upload in progress, if there is one.
    func committedSize(_ name: ResourceName) -> Int64? {
        uploads.withLock { $0[Self.key(name)] }?.committed
    }

    /// The stream of `upload` ended before finish_write: keep it for a resumption.
    func park(_ upload: Upload) {
        upload.withState { (state: inout Upload.State) in
            state.attached = false
            state.parkedAt = .now
        }
    }

    func remove(_ upload: Upload) {
        uploads.withLock { uploads in
            if uploads[upload.key] === upload { uploads[upload.key] = nil }
        }
    }

    /// Abandons parked uploads idle for longer than `idleTimeout`; returns how many.
    @discardableResult
    public func expireIdle(now: ContinuousClock.Instant = .now) -> Int {
        let expired = uploads.withLock { uploads -> [Upload] in
            let expired = uploads.values.filter { upload in
                upload.withState { (state: inout Upload.State) -> Bool in
                    guard !state.attached, let parkedAt = state.parkedAt else { return false }
                    return now - parkedAt >= idleTimeout
                }
            }
            for upload in expired { uploads[upload.key] = nil }
            return expired
        }
        for upload in expired { upload.abandon("upload of \(upload.digest) was idle for more than \(idleTimeout)") }
        return expired.count
    }

    /// Abandons every upload; for shutdown, after the server stopped taking requests.
    public func abandonAll() {
        let all = uploads.withLock { uploads in
            defer { uploads.removeAll() }
            return Array(uploads.values)
        }
        for upload in all { upload.abandon("the server is shutting down") }
    }

    public var count: Int { uploads.withLock { $0.count } }

    /// Expires idle uploads periodically until cancelled.
    public func runExpiry() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: min(idleTimeout, .seconds(10)))
            expireIdle()
        }
    }
}

/// Hands one chunk at a time from a Write stream to its store write, and tells the sender whether the
/// store took it.
///
/// `send` returns true only once the store's `next()` has the chunk, and false when it did not (the
/// sending task was cancelled first, or the hand-off ended): the committed size a Write reports and
/// QueryWriteStatus answers is the sum of the chunks for which `send` returned true, so it is never
/// more than the store received, and a resumed upload continues exactly where the store stands.
/// (AsyncAlgorithms' channel returns from `send` without delivering when its task is cancelled, and
/// does not say so.)
final class ChunkHandOff: Sendable {
    private enum State {
        case idle
        /// A sender waits for the store to take its chunk.
        case chunkWaiting(Data, sender: UInt64, CheckedContinuation<Bool, Never>)
        /// The store waits for a chunk.
        case storeWaiting(CheckedContinuation<Data?, any Error>)
        /// Finished (nil: the body ends normally) or failed; no chunk is taken any more.
        case ended(StrataError?)
    }

    private let state = Mutex<(state: State, senders: UInt64)>((.idle, 0))

    /// Offers `chunk` to the store and waits until it takes it (true) or cannot (false).
    func send(_ chunk: Data) async -> Bool {
        let sender = state.withLock { state -> UInt64 in
            state.senders += 1
            return state.senders
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let store = state.withLock { state -> CheckedContinuation<Data?, any Error>? in
                    switch state.state {
                    case .storeWaiting(let store):
                        state.state = .idle
                        return store
                    case .idle where !Task.isCancelled:
                        state.state = .chunkWaiting(chunk, sender: sender, continuation)
                        return nil
                    case .idle, .ended, .chunkWaiting:
                        // Cancelled before the store took it, ended, or (never, one stream writes an upload
                        // at a time) another chunk in the way: not delivered.
                        continuation.resume(returning: false)
                        return nil
                    }
                }
                if let store {
                    store.resume(returning: chunk)
                    continuation.resume(returning: true)
                }
            }
        } onCancel: {
            let waiting = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                guard case .chunkWaiting(_, let waiting, let continuation) = state.state, waiting == sender else { return nil }
                state.state = .idle
                return continuation
            }
            waiting?.resume(returning: false)
        }
    }

    /// The next chunk, for the store; nil once finished; throws once failed or when its task is cancelled.
    func next() async throws -> Data? {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Data?, any Error>) in
                let sender = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                    switch state.state {
                    case .chunkWaiting(let chunk, _, let sender):
                        state.state = .idle
                        continuation.resume(returning: chunk)
                        return sender
                    case .idle where !Task.isCancelled:
                        state.state = .storeWaiting(continuation)
                    case .idle, .storeWaiting:
                        continuation.resume(throwing: CancellationError())
                    case .ended(nil):
                        continuation.resume(returning: nil)
                    case .ended(let error?):
                        continuation.resume(throwing: error)
                    }
                    return nil
                }
                sender?.resume(returning: true)
            }
        } onCancel: {
            let waiting = state.withLock { state -> CheckedContinuation<Data?, any Error>? in
                guard case .storeWaiting(let continuation) = state.state else { return nil }
                state.state = .idle
                return continuation
            }
            waiting?.resume(throwing: CancellationError())
        }
    }

    /// Ends the body normally: the store sees its end after the chunks it took.
    func finish() { end(nil) }

    /// Ends the body with `error`, which the store's next read throws, so it commits nothing.
    func fail(_ error: StrataError) { end(error) }

    private func end(_ error: StrataError?) {
        let (sender, store) = state.withLock { state -> (CheckedContinuation<Bool, Never>?, CheckedContinuation<Data?, any Error>?) in
            switch state.state {
            case .ended: return (nil, nil)
            case .idle:
                state.state = .ended(error)
                return (nil, nil)
            case .chunkWaiting(_, _, let sender):
                state.state = .ended(error)
                return (sender, nil)
            case .storeWaiting(let store):
                state.state = .ended(error)
                return (nil, store)
            }
        }
        sender?.resume(returning: false)
        if let store {
            if let error { store.resume(throwing: error) } else { store.resume(returning: nil) }
        }
    }
}
