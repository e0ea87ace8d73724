import Foundation
import Logging
import NIOPosix
import StrataCompression
import StrataCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Blobs as files under `path/cas/{first two hex}/{hash}_{size}` for SHA-256 (the layout since the
/// start), and `path/cas/{function}/{first two hex}/{hash}_{size}` for the other digest functions
/// (e.g. `cas/blake3/ab/ab…_12`), whose folders are created by their first write: a BLAKE3 and a
/// SHA-256 blob with the same hex and size are two files.
///
/// A write streams into a private file under `path/tmp`, is verified while it streams, is flushed
/// (`fsync`), and only then renamed into place: a file under its final name is always complete and
/// correct, and it survives a restart.
///
/// Creating the store touches nothing on disk (loading a configuration must not disturb a server
/// using the same folder); `prepare()` (`strata serve` only) creates the folders, removes temporary
/// files a crashed process left (only those untouched for `staleTemporaryFileAge`: another process may
/// be writing the others) and builds the in-memory index of the blobs from the file names
/// (`DiskBlobIndex`). A write also creates a missing folder itself.
///
/// Prepared, the store answers FindMissingBlobs from the index alone, and a write of a blob the index
/// does not hold goes ahead without a look at the disk. The files stay the truth: a read that finds a
/// file gone (deleted by another process) answers NOT_FOUND and forgets the blob, and a blob the index
/// holds is confirmed by a `stat` before a write is skipped, so no write is answered OK without its
/// file. Until a read notices, FindMissingBlobs reports such a blob present, as bazel-remote's index
/// does; Bazel takes a cache hit whose output is NOT_FOUND for a miss and runs the action again (a
/// build without the bytes restarts: `--experimental_remote_cache_eviction_retries`), and its upload
/// then stores the blob, FindMissingBlobs reporting it missing by then. Unprepared (the maintenance
/// commands, which must not trust a picture of a folder a live server changes), the files answer
/// every question.
///
/// With a `budget`, the store counts its bytes (the index's, kept then even unprepared) and
/// a write that would pass the budget is refused with RESOURCE_EXHAUSTED, or, configured as a cache,
/// makes room by deleting the least recently used blobs (recency kept in memory; at start, the order
/// of the files' access or modification times). An evicted blob counts as absent from the moment it
/// is chosen: a write of it that starts then stores a fresh copy (renamed into place only after the
/// old file is gone), and FindMissingBlobs reports it missing, so an acknowledged blob is never deleted
/// by an eviction that had already chosen it.
///
/// With `compressionLevel`, new blobs are stored as one zstd frame in `{hash}_{size}.zst`, whatever
/// their size; the distinct name keeps them apart from the uncompressed files. Both kinds are read
/// whatever the setting (an uncompressed file first), so switching compression on or off loses no blob
/// and can never take one kind of file for the other. A budget counts the bytes of the files on disk.
/// A compressed copy that does not decompress to its digest's size is DATA_LOSS, as a file of the wrong
/// size is; `readZstd` hands a compressed copy out as it is stored.
public final class DiskBlobStore: ListableBlobStore, Preparable {
    public struct Budget: Sendable, Equatable {
        public var maxBytes: Int64
        public var evictLeastRecentlyUsed: Bool

        public init(maxBytes: Int64, evictLeastRecentlyUsed: Bool = false) {
            self.maxBytes = maxBytes
            self.evictLeastRecentlyUsed = evictLeastRecentlyUsed
        }
    }

    public let root: URL
    public let budget: Budget?
    /// The zstd level new blobs are stored at; nil: stored as they are.
    public let compressionLevel: Int32?
    public static var compressionLevels: ClosedRange<Int32> { Zstd.levels }
    public static let defaultCompressionLevel = Zstd.defaultLevel
    private let casDirectory: String
    private let tmpDirectory: String
    private let sync: Bool
    private let threadPool: NIOThreadPool
    /// The index of the stored blobs, complete once `prepare()` scanned the folder; before that (and in
    /// the maintenance commands, which never prepare), kept only with a budget, for what this process
    /// wrote or found.
    private let usage: Mutex<DiskUsage>
    private let logger: Logger
    /// Evictions and refusals are warned of once a minute at most: a full store sees one per write.
    private let evictionWarnings = WarningRateLimit()
    private let refusalWarnings = WarningRateLimit()

    /// Before refusing a write for lack of room, the store counts its files again if it last did
    /// longer ago than this: another process (`strata cleanup`, the janitor) may have deleted some.
    static let recountInterval: Duration = .seconds(10)

    /// Bytes gathered before one `write(2)`: Bazel sends 16 KiB messages; a syscall and a thread hop for
    /// each would cost more than the copy.
    static let writeBufferSize = 1 << 20

    /// Temporary files untouched for this long belong to a write that will not finish (its process
    /// died): `prepare()` removes them. A live write touches its file at least every `writeBufferSize`
    /// bytes, and an upload stalled this long has been given up by its client.
    public static let staleTemporaryFileAge: Duration = .seconds(3600)

    /// Touches nothing on disk: `prepare()` does.
    public init(
        path: String, sync: Bool = true, budget: Budget? = nil, compressionLevel: Int32? = nil,
        threadPool: NIOThreadPool = .singleton, logger: Logger = Logger(label: "strata.disk")
    ) {
        self.compressionLevel = compressionLevel
        self.logger = logger
        let root = URL(fileURLWithPath: path, isDirectory: true).standardizedFileURL
        self.root = root
        self.casDirectory = root.appendingPathComponent("cas").path
        self.tmpDirectory = root.appendingPathComponent("tmp").path
        self.sync = sync
        self.budget = budget
        self.threadPool = threadPool
        self.usage = Mutex(DiskUsage(index: DiskBlobIndex(), tracked: budget != nil, lastCount: .now))
    }

    /// Creates the folders, removes stale temporary files (`staleTemporaryFileAge`) and builds the index
    /// of the stored blobs. Safe while another process uses the folder: a temporary file still being
    /// written is left alone.
    public func prepare() async throws {
        let casDirectory = casDirectory
        let tmpDirectory = tmpDirectory
        let root = root
        try await threadPool.runIfActive {
            let files = FileManager.default
            do {
                // Names the cause (a path component that is a file, a folder not writable) on its own.
                try createDirectories(atPath: casDirectory)
            } catch {
                let cause = StrataError.from(error)
                throw StrataError(cause.code, "cannot prepare disk storage at \(root.path): \(cause.message)")
            }
            do {
                for byte in 0..<256 {
                    let fanOut = casDirectory + "/" + [UInt8(byte)].hexString
                    if !files.fileExists(atPath: fanOut) {
                        try files.createDirectory(atPath: fanOut, withIntermediateDirectories: true)
                    }
                }
                try files.createDirectory(atPath: tmpDirectory, withIntermediateDirectories: true)
            } catch {
                throw StrataError.internal("cannot prepare disk storage at \(root.path): \(error.localizedDescription)")
            }
            Self.removeStaleTemporaryFiles(tmpDirectory, olderThan: Date() - Self.staleTemporaryFileAge.timeInterval)
        }
        let index = try await threadPool.runIfActive { self.scan() }
        usage.withLock { usage in
            usage.index = index
            for digest in usage.evicting { usage.index.remove(digest) }
            usage.lastCount = .now
            usage.tracked = true
            usage.complete = true
        }
    }

    /// The index of the folder's blobs (on a pool thread): with the files' times when an evicting
    /// budget orders them, with compressed files' sizes when a budget counts them.
    private func scan() -> DiskBlobIndex {
        DiskBlobIndex.scan(casDirectory, times: budget?.evictLeastRecentlyUsed == true, compressedSizes: budget != nil)
    }

    /// Unlinks the files of `directory` last modified before `cutoff`; the others may be being written.
    static func removeStaleTemporaryFiles(_ directory: String, olderThan cutoff: Date) {
        guard let dir = opendir(directory) else { return }
        defer { closedir(dir) }
        let limit = cutoff.timeIntervalSince1970
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            let path = "\(directory)/\(name)"
            var info = stat()
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
            let modified = Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
            if modified < limit { unlink(path) }
        }
    }

    public var maximumBlobSize: Int64? { budget?.maxBytes }

    /// Bytes of the blobs a store at `path` holds, by a read-only walk: to size a budget before the
    /// store is opened.
    public static func storedBytes(path: String) -> Int64 {
        DiskBlobIndex.scan(
            URL(fileURLWithPath: path, isDirectory: true).standardizedFileURL.appendingPathComponent("cas").path,
            times: false, compressedSizes: true
        ).totalBytes
    }

    /// Bytes of the blobs stored, when the store has a budget.
    public var storedBytes: Int64? { budget == nil ? nil : usage.withLock { $0.index.totalBytes } }
    /// Bytes and blobs stored, read together (counted only with a budget).
    var budgetState: (bytes: Int64, blobs: Int) { usage.withLock { ($0.index.totalBytes, $0.index.count) } }
    /// Blobs in the index and the heap bytes it holds: for the start-up figures (`strata bench`).
    public var indexState: (blobs: Int, bytes: Int) { usage.withLock { ($0.index.count, $0.index.allocatedBytes) } }
    /// Blobs evicted to make room since start.
    var evictionCount: Int64 { evicted.load(ordering: .relaxed) }
    private let evicted = Atomic<Int64>(0)

    func path(of digest: Digest) -> String {
        "\(fanOutDirectory(of: digest))/\(digest.hash)_\(digest.sizeBytes)"
    }

    /// Flushes the folders above a fan-out folder just created (`cas/blake3/ab` is made by the first
    /// BLAKE3 write): its new entry must survive a crash as the blob renamed into it does.
    private func syncParents(of directory: String) {
        var parent = directory
        while parent.count > casDirectory.count, let slash = parent.lastIndex(of: "/") {
            parent = String(parent[..<slash])
            syncDirectory(parent)
        }
    }

    /// `cas/{first two hex}` for SHA-256, `cas/{function}/{first two hex}` for the other functions.
    private func fanOutDirectory(of digest: Digest) -> String {
        "\(casDirectory)/\(digest.namespacePrefix)\(digest.hash.prefix(2))"
    }

    /// Every fan-out folder a blob can be in, with the digest function of the blobs it holds.
    static func fanOutDirectories(_ casDirectory: String) -> [(directory: String, function: DigestFunction)] {
        DigestFunction.supported.flatMap { function in
            let namespace = function == .sha256 ? "" : function.name + "/"
            return (0..<256).map { byte in ("\(casDirectory)/\(namespace)\([UInt8(byte)].hexString)", function) }
        }
    }

    /// The file of a blob stored compressed: its uncompressed file's name with `.zst`.
    func compressedPath(of digest: Digest) -> String { path(of: digest) + Self.compressedSuffix }

    static let compressedSuffix = ".zst"

    /// A blob's file as found on disk.
    struct StoredFile {
        var path: String
        var compressed: Bool
        /// Its size on disk: the blob's size, or its zstd frame's.
        var bytes: Int64
    }

    /// The file holding `digest` (on a pool thread): its uncompressed file of the right size, else its
    /// compressed file; nil when neither is there.
    func storedFile(_ digest: Digest) -> StoredFile? {
        var info = stat()
        let plain = path(of: digest)
        if stat(plain, &info) == 0 && Int64(info.st_size) == digest.sizeBytes {
            return StoredFile(path: plain, compressed: false, bytes: digest.sizeBytes)
        }
        let compressed = plain + Self.compressedSuffix
        if stat(compressed, &info) == 0 { return StoredFile(path: compressed, compressed: true, bytes: Int64(info.st_size)) }
        return nil
    }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        // Prepared: the index answers, as an in-memory store does. Victims of an eviction left it
        // when they were chosen, so they are missing already.
        let indexed = usage.withLock { usage -> [Digest]? in
            guard usage.complete else { return nil }
            return digests.filter { !$0.isEmpty && !usage.index.touch($0) }
        }
        if let indexed { return indexed.uniqued() }
        // Not prepared (a maintenance command, a store in a test): the files answer, since another
        // process may have written or deleted them.
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        if candidates.isEmpty { return [] }
        let missing = try await threadPool.runIfActive {
            candidates.filter { self.storedFile($0) == nil }
        }
        guard budget != nil else { return missing }
        let absent = Set(missing)
        let found = candidates.filter { !absent.contains($0) }
        usage.withLock { usage in
            for digest in missing { usage.index.remove(digest) }
        }
        let stored = try await confirmStored(found)
        if stored.count == found.count { return missing }
        // Chosen for eviction since the `stat`: missing, in request order.
        return candidates.filter { absent.contains($0) || !stored.contains($0) }
    }

    /// Of `digests`, whose files a `stat` outside the lock found, those that count as stored; each is
    /// made the most recently used. Decided under the lock that eviction chooses its victims under: a
    /// blob chosen for eviction (its file about to be unlinked) is not stored, and one that is stored now
    /// is chosen only after every less recently used blob, never by an eviction already under way. A
    /// file the accounting does not know (evicted and gone since the `stat`, or written by another
    /// process) is looked at again under the lock.
    private func confirmStored(_ digests: [Digest]) async throws -> Set<Digest> {
        var stored = Set<Digest>()
        var unknown: [Digest] = []
        usage.withLock { usage in
            for digest in digests where !usage.evicting.contains(digest) {
                if usage.index.touch(digest) { stored.insert(digest) } else { unknown.append(digest) }
            }
        }
        if unknown.isEmpty { return stored }
        let checked = unknown
        let confirmed = try await threadPool.runIfActive {
            self.usage.withLock { usage in
                checked.filter { digest in
                    guard !usage.evicting.contains(digest) else { return false }
                    guard let file = self.storedFile(digest) else { return false }
                    usage.index.insert(digest, storedBytes: file.bytes)
                    return true
                }
            }
        }
        return stored.union(confirmed)
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        let (file, stored) = try await threadPool.runIfActive { try self.openStored(digest) }
        account { $0.used(digest) }
        guard stored.compressed else { return Self.chunks(of: file, range, path: stored.path, pool: threadPool) }
        let whole = Self.chunks(of: file, 0..<stored.bytes, path: stored.path, pool: threadPool)
            .zstdDecompressed(expectedSize: digest.sizeBytes, subject: "blob \(digest) in \(stored.path)", failureCode: .dataLoss)
        // A whole read runs the decompression to its end, which checks that the frame ends there too.
        return range == 0..<digest.sizeBytes ? whole : whole.slice(range)
    }

    /// Bytes `range` of an open file, a chunk at a time on `pool`.
    private static func chunks(of file: FileDescriptor, _ range: Range<Int64>, path: String, pool: NIOThreadPool) -> BlobBody {
        BlobBody {
            var position = range.lowerBound
            return BlobBody.AsyncIterator {
                guard position < range.upperBound else { return nil }
                let count = Int(min(Int64(BlobBody.defaultChunkSize), range.upperBound - position))
                let at = position
                let chunk = try await pool.runIfActive { try file.read(count: count, at: at, path: path) }
                position += Int64(chunk.count)
                return chunk
            }
        }
    }

    /// A compressed copy as it is stored; nil for a blob stored uncompressed or absent.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        if digest.isEmpty { return nil }
        let opened: (FileDescriptor, StoredFile)
        do {
            opened = try await threadPool.runIfActive { try self.openStored(digest) }
        } catch let error as StrataError where error.code == .notFound {
            return nil
        }
        guard opened.1.compressed else { return nil }
        account { $0.used(digest) }
        return Self.chunks(of: opened.0, 0..<opened.1.bytes, path: opened.1.path, pool: threadPool)
    }

    /// Opens a stored blob's file (on a pool thread), uncompressed or else compressed, checking the
    /// size of an uncompressed one.
    private func openStored(_ digest: Digest) throws -> (FileDescriptor, StoredFile) {
        var path = path(of: digest)
        var compressed = false
        var fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 && errno == ENOENT {
            path += Self.compressedSuffix
            compressed = true
            fd = open(path, O_RDONLY | O_CLOEXEC)
        }
        guard fd >= 0 else {
            if errno == ENOENT {
                // Deleted by someone else: forgotten, so FindMissingBlobs reports it missing from now on.
                account { $0.index.remove(digest) }
                throw StrataError.notFound("blob \(digest) is not in the CAS")
            }
            throw posixError("open", path)
        }
        let file = FileDescriptor(fd)
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw posixError("stat", path) }
        if compressed { return (file, StoredFile(path: path, compressed: true, bytes: Int64(info.st_size))) }
        guard Int64(info.st_size) == digest.sizeBytes else {
            // Only a damaged disk gets here (we rename complete files only). DATA_LOSS is how a backend
            // reports a damaged copy: `VerifyingBlobStore` removes it and answers NOT_FOUND.
            throw StrataError(.dataLoss, "size mismatch: \(path) holds \(info.st_size) bytes, the digest says \(digest.sizeBytes)")
        }
        return (file, StoredFile(path: path, compressed: false, bytes: digest.sizeBytes))
    }

    /// Reads the blobs of a BatchReadBlobs in one thread-pool job, rather than two hops per blob.
    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        let results: [Result<Data, StrataError>]
        do {
            results = try await threadPool.runIfActive {
                digests.map { digest in
                    if digest.isEmpty { return .success(Data()) }
                    return Result { () throws(StrataError) -> Data in
                        do {
                            let (file, stored) = try self.openStored(digest)
                            let data = try file.read(count: Int(stored.bytes), at: 0, path: stored.path)
                            guard stored.compressed else { return data }
                            return try ZstdDecompressor.decompress(
                                data, expectedSize: digest.sizeBytes, subject: "blob \(digest) in \(stored.path)", failureCode: .dataLoss)
                        } catch {
                            throw StrataError.from(error)
                        }
                    }
                }
            }
        } catch {
            return digests.map { _ in .failure(StrataError.from(error)) }
        }
        account { usage in
            for (digest, result) in zip(digests, results) where !digest.isEmpty {
                if case .success = result { usage.used(digest) }
            }
        }
        return results
    }

    /// Writes the blobs of a BatchUpdateBlobs: all are hashed first (`verifyBatch`), then written
    /// in one thread-pool job instead of three hops per blob. With `sync`, every file is written before
    /// the first is flushed, so the flushes find their data already queued, and each fan-out directory
    /// is flushed once after all the renames rather than once per blob. A budgeted store writes one by
    /// one, each reserving its bytes.
    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        guard budget == nil && compressionLevel == nil else {
            return await concurrentMap(blobs) { blob in try await self.write(blob.digest, body: BlobBody(data: blob.data)) }
        }
        var verified = [Result<Void, StrataError>](repeating: .success(()), count: blobs.count)
        var toWrite: [Int] = []
        // On several cores when the batch is large (see `verifyBatch`).
        for (index, error) in await verifyBatch(blobs).enumerated() {
            if let error {
                verified[index] = .failure(error)
            } else if !blobs[index].digest.isEmpty {
                toWrite.append(index)
            }
        }
        if toWrite.isEmpty { return verified }
        let accepted = toWrite
        let sync = self.sync
        let tmpDirectory = self.tmpDirectory
        do {
            return try await threadPool.runIfActive { [verified] in
                var results = verified
                var written: [(index: Int, file: FileDescriptor, tmpPath: String, finalPath: String)] = []
                func fail(_ index: Int, _ error: any Error, _ tmpPath: String) {
                    unlink(tmpPath)
                    results[index] = .failure(StrataError.from(error))
                }
                for index in accepted {
                    let digest = blobs[index].digest
                    let finalPath = self.path(of: digest)
                    if self.isStoredBeforeWrite(digest) { continue }
                    let tmpPath = "\(tmpDirectory)/\(UUID().uuidString)"
                    let file: FileDescriptor
                    do {
                        file = try self.createTemporaryFile(tmpPath)
                    } catch {
                        results[index] = .failure(StrataError.from(error))
                        continue
                    }
                    do {
                        try file.writeAll(blobs[index].data, path: tmpPath)
                        written.append((index, file, tmpPath, finalPath))
                    } catch {
                        fail(index, error, tmpPath)
                    }
                }
                var directories = Set<String>()
                for entry in written {
                    do {
                        if sync, fsync(entry.file.fd) != 0 { throw posixError("fsync", entry.tmpPath) }
                        try entry.file.close(path: entry.tmpPath)
                        if rename(entry.tmpPath, entry.finalPath) != 0 {
                            guard errno == ENOENT else { throw posixError("rename", entry.finalPath) }
                            let directory = String(entry.finalPath[..<entry.finalPath.lastIndex(of: "/")!])
                            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                            if sync { self.syncParents(of: directory) }
                            guard rename(entry.tmpPath, entry.finalPath) == 0 else { throw posixError("rename", entry.finalPath) }
                        }
                        directories.insert(String(entry.finalPath[..<entry.finalPath.lastIndex(of: "/")!]))
                    } catch {
                        fail(entry.index, error, entry.tmpPath)
                    }
                }
                if sync { for directory in directories { syncDirectory(directory) } }
                self.account { usage in
                    for entry in written {
                        guard case .success = results[entry.index] else { continue }
                        usage.index.insert(blobs[entry.index].digest, storedBytes: blobs[entry.index].digest.sizeBytes)
                    }
                }
                return results
            }
        } catch {
            for index in accepted { verified[index] = .failure(StrataError.from(error)) }
            return verified
        }
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        let finalPath = compressionLevel == nil ? path(of: digest) : compressedPath(of: digest)
        if digest.isEmpty {
            for try await _ in body.verifying(digest) {}
            return
        }
        // Prepared, a blob the index does not hold is written without a look at the disk.
        let indexed = usage.withLock { $0.complete ? $0.index.contains(digest) : nil }
        let exists = indexed == false ? false : try await threadPool.runIfActive { self.isStoredBeforeWrite(digest) }
        // A blob being evicted is written again: answering OK for it would acknowledge a file about to go.
        if exists {
            if budget == nil { return }
            if try await confirmStored([digest]).contains(digest) { return }
        }
        try await reserve(digest)

        let tmpPath = "\(tmpDirectory)/\(UUID().uuidString)"
        let file: FileDescriptor
        do {
            file = try await threadPool.runIfActive { try self.createTemporaryFile(tmpPath) }
        } catch {
            account { $0.reserved -= digest.sizeBytes }
            throw error
        }
        do {
            var pending = Data()
            pending.reserveCapacity(Self.writeBufferSize)
            // Compressed after verification: the frame ends only once the blob verified.
            let verified = body.verifying(digest)
            let stored = compressionLevel.map { verified.zstdCompressed(level: $0, uncompressedSize: digest.sizeBytes) } ?? verified
            var written: Int64 = 0
            for try await chunk in stored {
                written += Int64(chunk.count)
                if pending.isEmpty && chunk.count >= Self.writeBufferSize {
                    // ByteStream's 1 MiB messages fill the buffer on their own: write them without a copy.
                    try await threadPool.runIfActive { try file.writeAll(chunk, path: tmpPath) }
                    continue
                }
                pending.append(chunk)
                if pending.count >= Self.writeBufferSize {
                    let full = pending
                    try await threadPool.runIfActive { try file.writeAll(full, path: tmpPath) }
                    pending.removeAll(keepingCapacity: true)
                }
            }
            let rest = pending
            let sync = self.sync
            try await threadPool.runIfActive {
                try file.writeAll(rest, path: tmpPath)
                if sync, fsync(file.fd) != 0 { throw posixError("fsync", tmpPath) }
                try file.close(path: tmpPath)
            }
            try await renameIntoPlace(digest, from: tmpPath, to: finalPath, bytes: written)
        } catch {
            account { $0.reserved -= digest.sizeBytes }
            try? await threadPool.runIfActive {
                try? file.close(path: tmpPath)
                unlink(tmpPath)
            }
            throw error
        }
    }

    /// Creates a temporary file for a write, and the temporary folder first if it is missing (the
    /// store was not prepared, or the folder was removed under it).
    private func createTemporaryFile(_ tmpPath: String) throws -> FileDescriptor {
        var fd = open(tmpPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if fd < 0 && errno == ENOENT {
            try? FileManager.default.createDirectory(atPath: tmpDirectory, withIntermediateDirectories: true)
            fd = open(tmpPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        }
        guard fd >= 0 else { throw posixError("create", tmpPath) }
        return FileDescriptor(fd)
    }

    /// Renames a complete temporary file to its final name (creating a missing fan-out folder), then
    /// flushes the folder with `sync`. With a budget, the rename waits while an eviction is removing an
    /// older copy of the blob (it would unlink the new file), and happens under the lock that also makes
    /// the blob the most recently used and releases the write's reservation.
    /// `bytes`: the file's size, which the budget counts.
    private func renameIntoPlace(_ digest: Digest, from tmpPath: String, to finalPath: String, bytes: Int64) async throws {
        let directory = fanOutDirectory(of: digest)
        let sync = self.sync
        @Sendable func move() throws {
            if rename(tmpPath, finalPath) == 0 { return }
            guard errno == ENOENT else { throw posixError("rename", finalPath) }
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            if sync { self.syncParents(of: directory) }
            guard rename(tmpPath, finalPath) == 0 else { throw posixError("rename", finalPath) }
        }
        if budget == nil {
            try await threadPool.runIfActive {
                try move()
                if sync { syncDirectory(directory) }
            }
            account { $0.index.insert(digest, storedBytes: bytes) }
        } else {
            var pause = 1
            while true {
                let moved = try await threadPool.runIfActive {
                    try self.usage.withLock { usage throws -> Bool in
                        guard !usage.evicting.contains(digest) else { return false }
                        try move()
                        usage.reserved -= digest.sizeBytes
                        usage.index.insert(digest, storedBytes: bytes)
                        return true
                    }
                }
                if moved { break }
                // An eviction unlinks its victims in one pass: milliseconds.
                try await Task.sleep(for: .milliseconds(pause))
                pause = min(pause * 2, 50)
            }
            // Stored and counted already: nothing after this may fail the write.
            if sync { try? await threadPool.runIfActive { syncDirectory(directory) } }
        }
    }

    /// Applies `change` to the index when it is kept (prepared, or with a budget).
    private func account(_ change: (inout DiskUsage) -> Void) {
        usage.withLock { usage in if usage.tracked { change(&usage) } }
    }

    /// Whether `digest` is stored, for the check before a write (on a pool thread). The index is not
    /// trusted for a blob it holds: another process (`strata cleanup` through an index over this
    /// folder, an operator) may have deleted the file, and a write must never be answered OK for a
    /// file that is gone. One `stat` confirms it; a gone file is forgotten and written again.
    private func isStoredBeforeWrite(_ digest: Digest) -> Bool {
        if usage.withLock({ $0.complete && !$0.index.contains(digest) }) { return false }
        if storedFile(digest) != nil { return true }
        account { usage in if !usage.evicting.contains(digest) { usage.index.remove(digest) } }
        return false
    }

    /// Counts `digest`'s bytes as in flight, after making room by eviction if configured; throws
    /// RESOURCE_EXHAUSTED when the budget cannot hold them.
    private func reserve(_ digest: Digest) async throws {
        guard let budget else { return }
        guard digest.sizeBytes <= budget.maxBytes else {
            throw StrataError.resourceExhausted(
                "blob \(digest) (\(digest.sizeBytes) bytes) is larger than the budget of disk storage \(root.path) (max-size \(budget.maxBytes) bytes)")
        }
        var recounted = false
        while true {
            let outcome = usage.withLock { usage -> (victims: [Digest], full: Int64?) in
                var victims: [Digest] = []
                while usage.index.totalBytes + usage.reserved + digest.sizeBytes > budget.maxBytes {
                    guard budget.evictLeastRecentlyUsed, let victim = usage.index.removeLeastRecent() else {
                        usage.evicting.formUnion(victims)
                        return (victims, usage.index.totalBytes + usage.reserved)
                    }
                    victims.append(victim)
                }
                // Absent from now on (`confirmStored`), until their files are gone.
                usage.evicting.formUnion(victims)
                usage.reserved += digest.sizeBytes
                return (victims, nil)
            }
            if !outcome.victims.isEmpty {
                let victims = outcome.victims
                evicted.add(Int64(victims.count), ordering: .relaxed)
                if let heldBack = evictionWarnings.admit() {
                    logger.warning("disk storage \(root.path) is at its max-size (\(budget.maxBytes) bytes): evicting \(victims.count) least recently used blobs to store blob \(digest)\(heldBack > 0 ? " (and \(heldBack) evictions more since the last warning)" : "")")
                }
                let paths = victims.flatMap { [path(of: $0), compressedPath(of: $0)] }
                var failure: (any Error)?
                do {
                    try await threadPool.runIfActive {
                        var failure: StrataError?
                        for path in paths where unlink(path) != 0 && errno != ENOENT { failure = failure ?? posixError("evict", path) }
                        if let failure { throw failure }
                    }
                } catch {
                    failure = error
                }
                usage.withLock { usage in
                    usage.evicting.subtract(victims)
                    if failure != nil, outcome.full == nil {
                        // The write will not happen: its reservation must not shrink the budget for good.
                        usage.reserved -= digest.sizeBytes
                    }
                }
                if let failure { throw failure }
            }
            guard let used = outcome.full else { return }
            let due = usage.withLock { ContinuousClock.now - $0.lastCount >= Self.recountInterval }
            if recounted || !due {
                let refusal = StrataError.resourceExhausted(
                    "disk storage \(root.path) is at its budget (max-size \(budget.maxBytes) bytes, \(used) in use or being written): cannot store blob \(digest) (\(digest.sizeBytes) bytes)")
                if let heldBack = refusalWarnings.admit() {
                    logger.warning("\(refusal.message)\(heldBack > 0 ? " (and \(heldBack) refusals more since the last warning)" : "")")
                }
                throw refusal
            }
            let index = try await threadPool.runIfActive { self.scan() }
            usage.withLock { usage in
                usage.index = index
                for digest in usage.evicting { usage.index.remove(digest) }
                usage.lastCount = .now
            }
            recounted = true
        }
    }

    /// The complete blob files of one fan-out directory of `function`'s blobs, with their `stat`:
    /// uncompressed files of the digest's size and compressed (`.zst`) files.
    static func listDirectory(_ directory: String, function: DigestFunction) -> [(Digest, stat)] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var result: [(Digest, stat)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            let compressed = name.hasSuffix(compressedSuffix)
            guard let digest = Digest(function: function, hashAndSize: compressed ? name.dropLast(compressedSuffix.count) : name[...]) else { continue }
            var info = stat()
            guard stat("\(directory)/\(name)", &info) == 0, compressed || Int64(info.st_size) == digest.sizeBytes else { continue }
            result.append((digest, info))
        }
        return result
    }

    public func forEachBlobPage(pageSize: Int, _ body: ([StoredBlob]) async throws -> Void) async throws {
        var page: [StoredBlob] = []
        for (directory, function) in Self.fanOutDirectories(casDirectory) {
            let listed = try await threadPool.runIfActive { Self.listDirectory(directory, function: function) }
            for (digest, info) in listed {
                let modified = Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
                page.append(StoredBlob(digest: digest, modified: Date(timeIntervalSince1970: modified)))
                if page.count >= pageSize {
                    try await body(page)
                    page.removeAll(keepingCapacity: true)
                }
            }
        }
        if !page.isEmpty { try await body(page) }
    }

    public func delete(_ digests: [Digest]) async throws {
        let paths = digests.filter { !$0.isEmpty }.flatMap { [path(of: $0), compressedPath(of: $0)] }
        try await threadPool.runIfActive {
            for path in paths where unlink(path) != 0 && errno != ENOENT {
                throw posixError("delete", path)
            }
        }
        account { usage in
            for digest in digests { usage.index.remove(digest) }
        }
    }
}

/// A disk store's index of its blobs by recency, and a budget's bytes of writes in flight.
struct DiskUsage: Sendable {
    var index: DiskBlobIndex
    /// Whether the index is kept: with a budget, or once prepared.
    var tracked: Bool
    /// Whether the index holds every stored blob (built by `prepare()`'s scan), so a blob it does not
    /// hold is missing without a look at the disk.
    var complete = false
    /// Chosen for eviction, their files not yet unlinked: they count as absent.
    var evicting: Set<Digest> = []
    var reserved: Int64 = 0
    var lastCount: ContinuousClock.Instant

    init(index: DiskBlobIndex, tracked: Bool, lastCount: ContinuousClock.Instant) {
        self.index = index
        self.tracked = tracked
        self.lastCount = lastCount
    }

    mutating func used(_ digest: Digest) { _ = index.touch(digest) }
}

/// Owns a file descriptor and closes it when dropped, so an abandoned read stream leaks nothing.
final class FileDescriptor: @unchecked Sendable {
    // Mutated only by the one task that owns the stream, one call at a time.
    private(set) var fd: Int32

    init(_ fd: Int32) { self.fd = fd }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    func read(count: Int, at offset: Int64, path: String) throws -> Data {
        if count == 0 { return Data() }
        // Uninitialised memory handed to Data as is: Data(count:) would zero every byte pread overwrites.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 16)
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                buffer.deallocate()
                throw posixError("read", path)
            }
            if n == 0 {
                buffer.deallocate()
                throw StrataError(.dataLoss, "\(path) ended early: the file changed while being read")
            }
            done += n
        }
        return Data(bytesNoCopy: buffer, count: count, deallocator: .custom { pointer, _ in pointer.deallocate() })
    }

    func writeAll(_ data: Data, path: String) throws {
        try data.withUnsafeBytes { buffer in
            var done = 0
            while done < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw posixError("write", path)
                }
                done += n
            }
        }
    }

    func close(path: String) throws {
        guard fd >= 0 else { return }
        let result = Glibc.close(fd)
        fd = -1
        if result != 0 { throw posixError("close", path) }
    }
}

func syncDirectory(_ path: String) {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    Glibc.close(fd)
}

/// Maps errno to the code a client should see: a full disk is RESOURCE_EXHAUSTED, the rest INTERNAL.
func posixError(_ operation: String, _ path: String) -> StrataError {
    let code = errno
    let reason = String(cString: strerror(code))
    switch code {
    case ENOSPC, EDQUOT:
        return .resourceExhausted("disk storage is full: \(operation) \(path): \(reason)")
    default:
        return .internal("disk storage: \(operation) \(path): \(reason)")
    }
}
