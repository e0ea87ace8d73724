import Foundation
import Logging
import StrataCompression
import StrataCore

/// Checks what a persistent storage serves against the digest it was asked for, so that a copy damaged
/// at rest (a flipped bit in a file, a row or object overwritten or cut short, a remote that answers
/// wrong bytes) is never served as the blob and stops being reported present: the next client uploads
/// it again, and that upload heals the stored copy.
///
/// The configuration puts one around each persistent backend (`!disk-storage`, `!s3-storage`,
/// `!sql-storage`, `!remote-storage`); not around `!lru-storage`, whose blobs were verified on write
/// and never leave memory.
///
/// Invariants:
/// - Length, on every read, ranged or not: the backend compares the stored copy's length (file size,
///   row length, object size, bytes received) with the digest's size and reports a difference as
///   DATA_LOSS; that is the one error by which a backend says "my copy is damaged".
/// - Hash, on every whole-blob read (offset 0, a limit of 0 or covering the blob) unless `verifyReads`
///   is off: the bytes are hashed while they stream, and the last chunk is held back until length and
///   hash matched. A client therefore never receives a complete wrong blob: the stream ends with an
///   error instead of ending normally (and a blob of one chunk fails before any byte is sent). Ranged
///   reads (a resumed download) cannot be hashed; they are length-checked only.
/// - A copy found bad is deleted from the backend at once, and the read answers NOT_FOUND saying that
///   the stored copy was corrupt and has been removed. An index above (`!redis-index`, `!sql-index`)
///   sees that NOT_FOUND, from `read`, from the stream or from `readBatch`, and drops its entry, so
///   FindMissingBlobs reports the blob missing. A composition above (`!with-cache-storage`,
///   `!replicated-storage`) takes the NOT_FOUND as a miss in that tier or replica and serves and
///   repairs the blob from another one where it can.
/// - A write of a blob the backend reports stored (its size already checked by the backend's
///   `findMissing`) re-hashes the stored copy first and removes a bad one, so the backend's write,
///   which would have skipped the upload, stores it anew. Such writes are rare (clients upload what FindMissingBlobs said missing: retries, races between
///   clients, and the upload that heals a copy a read found corrupt), and reading a stored copy costs
///   less than receiving it; skipping on the strength of the size alone would keep a same-size corrupt
///   copy for good. Backends that overwrite on every write (`writeSkipsStoredCopy` false for that
///   digest) need no check.
///
/// Why NOT_FOUND and not DATA_LOSS or INTERNAL: REAPI clients treat NOT_FOUND from a CAS read as a
/// cache miss. Bazel then uploads the blob again (or re-runs the action that made it), which heals the
/// copy; any other code fails the build for a blob the cache can simply do without.
public final class VerifyingBlobStore<Backend: BlobStore>: BlobStore {
    public let backend: Backend
    /// What the backend is, for messages: "disk storage /var/cache/strata".
    public let name: String
    /// Whether whole-blob reads are hashed; lengths are always checked.
    public let verifyReads: Bool
    private let writeSkipsStoredCopy: @Sendable (Digest) -> Bool
    private let logger: Logger

    public init(
        _ backend: Backend, name: String, verifyReads: Bool = true,
        writeSkipsStoredCopy: @escaping @Sendable (Digest) -> Bool = { _ in true },
        logger: Logger = Logger(label: "strata.verifying-storage")
    ) {
        self.backend = backend
        self.name = name
        self.verifyReads = verifyReads
        self.writeSkipsStoredCopy = writeSkipsStoredCopy
        self.logger = logger
    }

    public var maximumBlobSize: Int64? { backend.maximumBlobSize }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        try await backend.findMissing(digests)
    }

    public func delete(_ digests: [Digest]) async throws {
        try await backend.delete(digests)
    }

    // MARK: Reads

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let body: BlobBody
        do {
            body = try await backend.read(digest, offset: offset, limit: limit)
        } catch let error as StrataError where error.code == .dataLoss {
            throw await removeCorrupt(digest, error.message)
        }
        if digest.isEmpty { return body }
        let whole = offset == 0 && (limit == nil || limit == 0 || limit! >= digest.sizeBytes)
        return verifyReads && whole ? verified(body, digest) : lengthChecked(body, digest)
    }

    /// A whole blob's body, hashed as it streams, its last chunk held until the blob verified.
    private func verified(_ body: BlobBody, _ digest: Digest) -> BlobBody {
        heldUntilChecked(body, digest) { HashCheck(digest: digest) }
    }

    /// A compressed copy handed out as stored (`readZstd`): decompressed and hashed alongside, whatever
    /// `verifyReads` says (the decompression that checks its length is most of the cost), and, as in
    /// `verified`, its last chunk held until the whole stream decompressed to the blob.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        let stored: BlobBody?
        do {
            stored = try await backend.readZstd(digest)
        } catch let error as StrataError where error.code == .dataLoss {
            throw await removeCorrupt(digest, error.message)
        }
        guard let stored else { return nil }
        let name = self.name
        return heldUntilChecked(stored, digest) { () throws(StrataError) in
            ZstdCheck(hash: HashCheck(digest: digest), decompressor: try ZstdDecompressor(
                expectedSize: digest.sizeBytes, subject: "blob \(digest) in \(name)", failureCode: .dataLoss))
        }
    }

    /// `body` passed on with its last chunk held back until `makeCheck()`'s check has seen the whole
    /// stream and found it to be the blob, so a reader never receives the end of a wrong copy: a
    /// mismatch (or the check's DATA_LOSS) removes the copy and fails the stream instead of ending it.
    private func heldUntilChecked(
        _ body: BlobBody, _ digest: Digest, _ makeCheck: @escaping @Sendable () throws(StrataError) -> any StreamCheck
    ) -> BlobBody {
        BlobBody {
            var iterator = body.makeAsyncIterator()
            var check: (any StreamCheck)?
            var held: Data?
            var finished = false
            return BlobBody.AsyncIterator {
                guard !finished else { return nil }
                do {
                    if check == nil { check = try makeCheck() }
                    while true {
                        guard let chunk = try await iterator.next() else {
                            finished = true
                            if let problem = try check!.finish() { throw await self.removeCorrupt(digest, problem) }
                            defer { held = nil }
                            return held
                        }
                        try check!.consume(chunk)
                        if chunk.isEmpty { continue }
                        defer { held = chunk }
                        if let previous = held { return previous }
                    }
                } catch let error as StrataError where error.code == .dataLoss {
                    finished = true
                    throw await self.removeCorrupt(digest, error.message)
                }
            }
        }
    }

    /// A ranged (or unhashed) body: the backend checks lengths; its DATA_LOSS becomes a removal.
    private func lengthChecked(_ body: BlobBody, _ digest: Digest) -> BlobBody {
        BlobBody {
            var iterator = body.makeAsyncIterator()
            return BlobBody.AsyncIterator {
                do {
                    return try await iterator.next()
                } catch let error as StrataError where error.code == .dataLoss {
                    throw await self.removeCorrupt(digest, error.message)
                }
            }
        }
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        var results = await backend.readBatch(digests)
        for (index, digest) in digests.enumerated() where !digest.isEmpty {
            switch results[index] {
            case .success(let data):
                if let problem = check(data, digest) { results[index] = .failure(await removeCorrupt(digest, problem)) }
            case .failure(let error) where error.code == .dataLoss:
                results[index] = .failure(await removeCorrupt(digest, error.message))
            case .failure:
                break
            }
        }
        return results
    }

    /// What is wrong with `data` as `digest`'s bytes (its length always; its hash with `verifyReads`).
    private func check(_ data: Data, _ digest: Digest) -> String? {
        guard Int64(data.count) == digest.sizeBytes else {
            return "size mismatch: \(data.count) bytes stored, the digest says \(digest.sizeBytes)"
        }
        guard verifyReads else { return nil }
        var hasher = digest.function.makeHasher()
        hasher.update(data)
        return storedCopyMismatch(digest, hasher)
    }

    /// Deletes the bad copy and returns the NOT_FOUND the reader gets (see the type's comment for why).
    /// The delete runs in its own task, so a reader that goes away does not leave the copy behind. A
    /// reader's find is confirmed first: the copy is read again, and one an upload healed while the
    /// reader streamed (or that is gone already) is left alone.
    private func removeCorrupt(_ digest: Digest, _ problem: String, confirm: Bool = true) async -> StrataError {
        if confirm, let now = try? await examine(digest) {
            switch now {
            case .corrupt: break
            case .intact:
                return .notFound(
                    "blob \(digest): the stored copy in \(name) was corrupt when read (\(problem)); a correct copy has been stored since: read it again")
            case .absent:
                return .notFound("blob \(digest) is not in the CAS: the stored copy in \(name) was corrupt (\(problem)) and has been removed; upload it again")
            }
        }
        let backend = self.backend
        let removal = await Task { () -> (any Error)? in
            do {
                try await backend.delete([digest])
                return nil
            } catch {
                return error
            }
        }.value
        if let removal {
            logger.error("blob \(digest) is corrupt in \(name) (\(problem)) and could not be removed: \(removal)")
            return .notFound(
                "blob \(digest) is not in the CAS: the stored copy in \(name) was corrupt (\(problem)) and could not be removed (\(StrataError.from(removal).message)); upload it again")
        }
        logger.error("blob \(digest) was corrupt in \(name) (\(problem)); removed it")
        return .notFound(
            "blob \(digest) is not in the CAS: the stored copy in \(name) was corrupt (\(problem)) and has been removed; upload it again")
    }

    // MARK: Writes

    public func write(_ digest: Digest, body: BlobBody) async throws {
        if !digest.isEmpty, writeSkipsStoredCopy(digest), try await backend.findMissing([digest]).isEmpty,
           case .corrupt(let problem) = try await examine(digest) {
            _ = await removeCorrupt(digest, problem, confirm: false)
        }
        // Always the backend's write, which decides itself whether the blob is stored (SQL asks its
        // primary, where `findMissing` may have asked a lagging replica): this store only makes sure
        // that what it would skip for is not a bad copy.
        try await backend.write(digest, body: body)
    }

    private enum StoredCopy {
        case intact
        case corrupt(String)
        /// Not stored (any more).
        case absent
    }

    /// The state of the stored copy of `digest`: read whole and hashed as it streams (a chunk at a time
    /// in memory).
    private func examine(_ digest: Digest) async throws -> StoredCopy {
        var hasher = digest.function.makeHasher()
        do {
            for try await chunk in try await backend.read(digest, offset: 0, limit: nil) {
                hasher.update(chunk)
                if hasher.byteCount > digest.sizeBytes { break }
            }
        } catch let error as StrataError where error.code == .notFound {
            return .absent
        } catch let error as StrataError where error.code == .dataLoss {
            return .corrupt(error.message)
        }
        return storedCopyMismatch(digest, hasher).map(StoredCopy.corrupt) ?? .intact
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        let candidates = blobs.map(\.digest).filter { !$0.isEmpty && writeSkipsStoredCopy($0) }.uniqued()
        if !candidates.isEmpty {
            do {
                let missing = Set(try await backend.findMissing(candidates))
                let stored = candidates.filter { !missing.contains($0) }
                if !stored.isEmpty {
                    // Re-hashed whatever `verifyReads` says (see the type's comment); the bad ones are
                    // removed here and stored again by the write below.
                    for (digest, copy) in zip(stored, await backend.readBatch(stored)) {
                        switch copy {
                        case .success(let data):
                            var hasher = digest.function.makeHasher()
                            hasher.update(data)
                            if let problem = storedCopyMismatch(digest, hasher) { _ = await removeCorrupt(digest, problem, confirm: false) }
                        case .failure(let error) where error.code == .dataLoss:
                            _ = await removeCorrupt(digest, error.message, confirm: false)
                        case .failure:
                            break
                        }
                    }
                }
            } catch {
                let failure = StrataError.from(error)
                return blobs.map { _ in .failure(failure) }
            }
        }
        return await backend.writeBatch(blobs)
    }
}

extension VerifyingBlobStore: ListableBlobStore where Backend: ListableBlobStore {
    public func forEachBlobPage(pageSize: Int, _ body: ([StoredBlob]) async throws -> Void) async throws {
        try await backend.forEachBlobPage(pageSize: pageSize, body)
    }
}

extension BlobBody {
    /// Runs `action` when the stream fails with NOT_FOUND (a stored copy found corrupt while it
    /// streamed, and removed), then fails the same way: lets an index drop the entry of a blob its
    /// storage lost during a read, as it does when the read itself answers NOT_FOUND.
    public func onNotFound(_ action: @escaping @Sendable () async -> Void) -> BlobBody {
        let source = self
        return BlobBody {
            var iterator = source.makeAsyncIterator()
            return BlobBody.AsyncIterator {
                do {
                    return try await iterator.next()
                } catch let error as StrataError where error.code == .notFound {
                    await action()
                    throw error
                }
            }
        }
    }
}

extension BlobBody {
    /// Continues with `replacement()`'s body when this one fails with NOT_FOUND before its first chunk:
    /// a copy of one chunk found corrupt (and removed) fails there, before any byte was sent, so another
    /// tier or replica can still serve the read. Once a chunk went out, a failure is the reader's.
    public func orElseBeforeFirstChunk(_ replacement: @escaping @Sendable () async throws -> BlobBody) -> BlobBody {
        let source = self
        return BlobBody {
            var iterator = source.makeAsyncIterator()
            var started = false
            var replaced: BlobBody.AsyncIterator?
            return BlobBody.AsyncIterator {
                if replaced != nil { return try await replaced!.next() }
                do {
                    let chunk = try await iterator.next()
                    started = true
                    return chunk
                } catch let error as StrataError where error.code == .notFound && !started {
                    replaced = try await replacement().makeAsyncIterator()
                    return try await replaced!.next()
                }
            }
        }
    }
}

/// A decorator that keeps no blobs of its own: the storage it wraps is where they are. The
/// configuration's checks look through it (an evicting `!disk-storage` stays evicting when verified).
public protocol TransparentBlobStore: BlobStore {
    var wrapped: any BlobStore { get }
}

extension VerifyingBlobStore: TransparentBlobStore {
    public var wrapped: any BlobStore { backend }
}

extension BlobStore {
    /// This store with every `TransparentBlobStore` around it taken off.
    public var unwrapped: any BlobStore {
        var store: any BlobStore = self
        while let transparent = store as? any TransparentBlobStore { store = transparent.wrapped }
        return store
    }
}

/// What is wrong with the bytes `hasher` saw as `digest`'s blob; nil when they are the blob.
private func storedCopyMismatch(_ digest: Digest, _ hasher: BlobHasher) -> String? {
    guard hasher.byteCount == digest.sizeBytes else {
        return "size mismatch: \(hasher.byteCount) bytes stored, the digest says \(digest.sizeBytes)"
    }
    let actual = hasher.finalizeDigest()
    guard actual == digest else { return "hash mismatch: the stored bytes hash to \(actual.hash)" }
    return nil
}

/// What `VerifyingBlobStore` checks a stored stream with as it passes: `consume` sees each chunk (and
/// throws DATA_LOSS as soon as the stream cannot be the blob), `finish` says what is wrong with the
/// whole stream, nil when it is the blob.
private protocol StreamCheck {
    mutating func consume(_ chunk: Data) throws(StrataError)
    mutating func finish() throws(StrataError) -> String?
}

/// The stream is the blob itself: hashed with the digest's function, never longer than its size.
private struct HashCheck: StreamCheck {
    let digest: Digest
    var hasher: BlobHasher

    init(digest: Digest) {
        self.digest = digest
        self.hasher = digest.function.makeHasher()
    }

    mutating func consume(_ chunk: Data) throws(StrataError) {
        hasher.update(chunk)
        guard hasher.byteCount <= digest.sizeBytes else {
            throw StrataError(.dataLoss, "size mismatch: more than \(digest.sizeBytes) bytes stored")
        }
    }

    mutating func finish() throws(StrataError) -> String? {
        storedCopyMismatch(digest, hasher)
    }
}

/// The stream is a zstd frame of the blob: decompressed (the decompressor refuses more than the
/// digest's size) and the output hashed.
private struct ZstdCheck: StreamCheck {
    var hash: HashCheck
    let decompressor: ZstdDecompressor

    mutating func consume(_ chunk: Data) throws(StrataError) {
        decompressor.feed(chunk)
        while !decompressor.needsInput { try hash.consume(try decompressor.output()) }
    }

    mutating func finish() throws(StrataError) -> String? {
        try decompressor.finish()
        return try hash.finish()
    }
}
