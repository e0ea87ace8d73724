import Foundation
import Logging
import NIOPosix
import StrataAPI
import StrataCore
import StrataStorage
import SwiftProtobuf
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Action results as files under `path/{first two hex}/{hash}_{size}_{function}`, so they survive a
/// restart like the disk CAS beside them.
///
/// A file holds a header line with the SHA-256 of its name and its serialized ActionResult, then the
/// result: a read checks it, and a damaged file (or one copied under another action's name) is removed
/// and answered as a miss, never handed out. An update writes a private file under `path/tmp`, flushes it
/// (`fsync`) and renames it into place: a reader or a crash sees the old result or the new one, whole.
///
/// The cache is bounded by `maxBytes` (its files' sizes in whole 4 KiB blocks, what they take on disk:
/// a typical result is a few hundred bytes) and optionally `maxEntries`, evicting the least
/// recently used entries; recency is kept in memory and, for the next start, in the files' access times
/// (set explicitly on each hit, so `noatime` mounts keep it too).
///
/// Creating the object touches nothing: the folder is read (its entries counted, temporary files of a
/// crashed writer removed) on the first call, and created by the first update.
public final class DiskActionCache: ActionCache {
    public struct Limits: Sendable, Equatable {
        public var maxBytes: Int64
        public var maxEntries: Int?

        public init(maxBytes: Int64, maxEntries: Int? = nil) {
            precondition(maxBytes > 0 && (maxEntries ?? 1) > 0, "a disk action cache needs positive limits")
            self.maxBytes = maxBytes
            self.maxEntries = maxEntries
        }

        func exceeded(by entries: LRUDictionary<String, Void>?) -> Bool {
            guard let entries else { return false }
            return entries.totalCost > maxBytes || entries.count > (maxEntries ?? .max)
        }
    }

    public let root: String
    public let limits: Limits
    private let tmpDirectory: String
    private let threadPool: NIOThreadPool
    /// Reads of entries run in the caller's thread while the disk answers quickly (see
    /// `ShortFileOperations`): at one client the hop to the pool and back cost more than the read.
    private let shortCalls: ShortFileOperations
    private let logger: Logger
    /// Evictions are warned of once a minute at most: a full cache evicts on every update.
    private let evictionWarnings = WarningRateLimit()
    /// The stored entries by recency, costing `cost(ofFileSize:)`; nil until the folder is first read.
    private let index = Mutex<LRUDictionary<String, Void>?>(nil)
    /// The first call's reading of the folder, which the calls arriving meanwhile wait for.
    private let loading = Mutex<Task<Void, any Error>?>(nil)
    private let tmpDirectoryMade = Atomic<Bool>(false)

    /// `max-size` when the configuration gives none: some 250,000 typical results.
    public static let defaultMaxBytes: Int64 = 1 << 30

    /// A temporary file older than this is a crashed writer's: a live one lasts a write and an fsync.
    static let staleTemporaryAge: TimeInterval = 3600
    static let headerPrefix = "strata-action-result sha256:"
    /// The largest file read or written: the largest ActionResult any cache reads, and its header. A
    /// damaged, larger file is read no further (and fails its checksum).
    static let maxFileBytes = Int(ActionCacheEntries.maxResultBytes) + 4096

    public init(
        path: String, limits: Limits, threadPool: NIOThreadPool = .singleton,
        logger: Logger = Logger(label: "strata.action-cache")
    ) {
        self.root = URL(fileURLWithPath: path, isDirectory: true).standardizedFileURL.path
        self.tmpDirectory = root + "/tmp"
        self.limits = limits
        self.threadPool = threadPool
        self.shortCalls = ShortFileOperations(pool: threadPool)
        self.logger = logger
    }

    /// Entries stored, and the bytes they count against `maxBytes` (after the first call).
    public var usage: (entries: Int, bytes: Int64)? {
        index.withLock { index in index.map { ($0.count, $0.totalCost) } }
    }

    static func name(of action: Digest) -> String {
        "\(action.hash.prefix(2))/\(action.hash)_\(action.sizeBytes)_\(action.function.name)"
    }

    public func get(_ action: Digest) async throws -> ActionResult? {
        try await load()
        let name = Self.name(of: action)
        let path = "\(root)/\(name)"
        let found = try await shortCalls.run { () throws -> StoredFile? in
            guard let file = try Self.readFile(path, maxBytes: Self.maxFileBytes) else {
                self.forget(name, path: path, inode: nil)
                return nil
            }
            // Access time now, modification time as it is (UTIME_NOW and UTIME_OMIT, macros Swift does not import).
            var times = [timespec(tv_sec: 0, tv_nsec: (1 << 30) - 1), timespec(tv_sec: 0, tv_nsec: (1 << 30) - 2)]
            _ = utimensat(AT_FDCWD, path, &times, 0)
            return file
        }
        guard let found else { return nil }
        let result: ActionResult
        do {
            result = try Self.decode(found.contents, name: name)
        } catch {
            logger.warning("removing damaged action cache entry \(path): \(StrataError.from(error).message)")
            try await threadPool.runIfActive { self.forget(name, path: path, inode: found.inode) }
            return nil
        }
        index.withLock { index in
            if index?.touch(name) == false { index?.insert(name, (), cost: Self.cost(ofFileSize: found.contents.count)) }
        }
        return result
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        let name = Self.name(of: action)
        let contents: Data
        do {
            contents = Self.encode(try result.serializedBytes(), name: name)
        } catch {
            throw StrataError.invalidArgument("the ActionResult cannot be serialized: \(error)")
        }
        guard contents.count <= Self.maxFileBytes else {
            throw StrataError.resourceExhausted(
                "the ActionResult of \(action) is \(contents.count) bytes serialized; a disk action cache stores at most \(ActionCacheEntries.maxResultBytes)")
        }
        guard Self.cost(ofFileSize: contents.count) <= limits.maxBytes else {
            throw StrataError.resourceExhausted(
                "the ActionResult of \(action) (\(contents.count) bytes stored) is larger than the disk action cache \(root) holds (max-size \(limits.maxBytes) bytes)")
        }
        try await load()
        try await threadPool.runIfActive { try self.store(contents, name: name) }
    }

    public func remove(_ action: Digest) async throws {
        try await load()
        let name = Self.name(of: action)
        let path = "\(root)/\(name)"
        try await threadPool.runIfActive {
            try self.index.withLock { index in
                if unlink(path) != 0 && errno != ENOENT { throw Self.posixError("delete", path) }
                _ = index?.remove(name)
            }
        }
    }

    // MARK: - Files

    struct StoredFile {
        var contents: Data
        var inode: UInt
    }

    /// What a file of `size` bytes counts against `maxBytes`: the 4 KiB blocks it takes on a usual
    /// filesystem, so a million small results count as the 4 GB they occupy, not their 300 MB of bytes.
    public static func cost(ofFileSize size: Int) -> Int64 {
        (Int64(size) + 4095) / 4096 * 4096
    }

    static func encode(_ serialized: Data, name: String) -> Data {
        var data = Data("\(headerPrefix)\(checksum(serialized, name: name))\n".utf8)
        data.append(serialized)
        return data
    }

    static func decode(_ contents: Data, name: String) throws -> ActionResult {
        guard let newline = contents.firstIndex(of: UInt8(ascii: "\n")),
              let header = String(data: contents[..<newline], encoding: .utf8), header.hasPrefix(headerPrefix)
        else { throw StrataError(.dataLoss, "it has no checksum header") }
        let serialized = contents[(newline + 1)...]
        guard header.dropFirst(headerPrefix.count) == checksum(serialized, name: name) else {
            throw StrataError(.dataLoss, "its checksum does not match its contents and name")
        }
        do {
            return try ActionResult(serializedBytes: serialized)
        } catch {
            throw StrataError(.dataLoss, "it is not a valid ActionResult: \(error)")
        }
    }

    /// The name is hashed in, so a file renamed or copied under another action's name is not served.
    static func checksum(_ serialized: some DataProtocol, name: String) -> String {
        var hasher = DigestFunction.sha256.makeHasher()
        hasher.update(Data("\(name)\n".utf8))
        hasher.update(serialized)
        return hasher.finalizeDigest().hash
    }

    /// The whole file (at most `maxBytes` of it), or nil when there is none.
    static func readFile(_ path: String, maxBytes: Int) throws -> StoredFile? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw posixError("open", path)
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw posixError("stat", path) }
        let size = min(Int(info.st_size), maxBytes)
        var data = Data(count: size)
        var done = 0
        while done < size {
            let n = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, size - done, off_t(done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw posixError("read", path)
            }
            if n == 0 { break }
            done += n
        }
        return StoredFile(contents: data.prefix(done), inode: UInt(info.st_ino))
    }

    /// Writes `contents` as entry `name` (on a pool thread): tmp file, fsync, then rename and account
    /// under the index's lock, so an eviction never deletes a file an update has just put in place.
    private func store(_ contents: Data, name: String) throws {
        if !tmpDirectoryMade.load(ordering: .relaxed) {
            try createDirectories(atPath: tmpDirectory)
            tmpDirectoryMade.store(true, ordering: .relaxed)
        }
        let tmpPath = "\(tmpDirectory)/\(UUID().uuidString)"
        let finalPath = "\(root)/\(name)"
        let fanOut = String(finalPath[..<finalPath.lastIndex(of: "/")!])
        let fd = open(tmpPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Self.posixError("create", tmpPath) }
        do {
            try contents.withUnsafeBytes { buffer in
                var done = 0
                while done < buffer.count {
                    let n = write(fd, buffer.baseAddress! + done, buffer.count - done)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw Self.posixError("write", tmpPath)
                    }
                    done += n
                }
            }
            guard fsync(fd) == 0 else { throw Self.posixError("fsync", tmpPath) }
            guard close(fd) == 0 else { throw Self.posixError("close", tmpPath) }
        } catch {
            close(fd)
            unlink(tmpPath)
            throw error
        }
        let victims: [String]
        do {
            victims = try index.withLock { index throws -> [String] in
                if rename(tmpPath, finalPath) != 0 {
                    guard errno == ENOENT else { throw Self.posixError("rename", finalPath) }
                    try createDirectories(atPath: fanOut)
                    guard rename(tmpPath, finalPath) == 0 else { throw Self.posixError("rename", finalPath) }
                }
                index?.insert(name, (), cost: Self.cost(ofFileSize: contents.count))
                var victims: [String] = []
                while limits.exceeded(by: index), let victim = index?.removeLeastRecent() {
                    victims.append(victim.key)
                    unlink("\(root)/\(victim.key)")
                }
                return victims
            }
        } catch {
            unlink(tmpPath)
            throw error
        }
        // The rename itself survives a crash only once its directory is flushed.
        let directory = open(fanOut, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
        if !victims.isEmpty, let heldBack = evictionWarnings.admit() {
            // An operator learns that the cache is full and drops results, once a minute at most.
            logger.warning("disk action cache \(root) is at its max-size: evicted \(victims.count) least recently used entries\(heldBack > 0 ? " (and \(heldBack) evictions more since the last warning)" : "")")
        }
    }

    /// Drops entry `name` from the index, and its file when it is damaged (`inode`: the file that was
    /// read, so a result an update has put in place since is kept). On a pool thread.
    private func forget(_ name: String, path: String, inode: UInt?) {
        index.withLock { index in
            var info = stat()
            let exists = stat(path, &info) == 0
            if let inode, exists, UInt(info.st_ino) == inode {
                unlink(path)
                _ = index?.remove(name)
            } else if !exists {
                _ = index?.remove(name)
            }
        }
    }

    // MARK: - The first call reads the folder

    private func load() async throws {
        if index.withLock({ $0 != nil }) { return }
        let task = loading.withLock { loading in
            if let loading { return loading }
            let task = Task { try await self.threadPool.runIfActive { try self.readFolder() } }
            loading = task
            return task
        }
        do {
            try await task.value
        } catch {
            // A folder that could not be read (a permission fixed since) is read again by the next call.
            loading.withLock { if $0 == task { $0 = nil } }
            throw error
        }
    }

    /// Counts the entries, oldest access first, evicts past the limits (they may have been lowered), and
    /// removes crashed writers' temporary files. A missing folder is an empty cache.
    private func readFolder() throws {
        var found: [(name: String, cost: Int64, time: Double)] = []
        var rootInfo = stat()
        if stat(root, &rootInfo) == 0 {
            guard (rootInfo.st_mode & S_IFMT) == S_IFDIR else {
                throw StrataError.internal("disk action cache \(root) is a file, not a directory")
            }
            for fanOut in Self.list(root) where fanOut.count == 2 && fanOut.allSatisfy(\.isHexDigit) {
                for file in Self.list("\(root)/\(fanOut)") {
                    var info = stat()
                    guard stat("\(root)/\(fanOut)/\(file)", &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
                    let accessed = Double(info.st_atim.tv_sec) + Double(info.st_atim.tv_nsec) / 1e9
                    let modified = Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
                    found.append(("\(fanOut)/\(file)", Self.cost(ofFileSize: Int(info.st_size)), max(accessed, modified)))
                }
            }
            let now = Date().timeIntervalSince1970
            for file in Self.list(tmpDirectory) {
                var info = stat()
                let path = "\(tmpDirectory)/\(file)"
                if stat(path, &info) == 0, now - Double(info.st_mtim.tv_sec) > Self.staleTemporaryAge { unlink(path) }
            }
        } else if errno != ENOENT && errno != ENOTDIR {
            // Missing (or under a file, which the first update reports with its cause): an empty cache.
            throw Self.posixError("stat", root)
        }
        var entries = LRUDictionary<String, Void>(capacity: .max)
        for entry in found.sorted(by: { $0.time < $1.time }) { entries.insert(entry.name, (), cost: entry.cost) }
        index.withLock { index in
            while limits.exceeded(by: entries), let victim = entries.removeLeastRecent() {
                unlink("\(root)/\(victim.key)")
            }
            index = entries
        }
    }

    static func list(_ directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// A full disk is RESOURCE_EXHAUSTED (the client may go on without caching), the rest INTERNAL.
    static func posixError(_ operation: String, _ path: String) -> StrataError {
        let code = errno
        let reason = String(cString: strerror(code))
        switch code {
        case ENOSPC, EDQUOT: return .resourceExhausted("disk action cache is full: \(operation) \(path): \(reason)")
        default: return .internal("disk action cache: \(operation) \(path): \(reason)")
        }
    }
}
