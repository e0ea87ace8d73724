import Foundation
import StrataCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The worker's local cache of input files, by digest, from which actions' input trees are
/// hard-linked: a second action with the same inputs downloads nothing.
///
/// - An entry is `{directory}/{function}/{hash}_{size}` (`…_x` for the executable copy: a hard link
///   shares its mode), written only after its bytes were verified against the digest, read-only,
///   with a fixed modification time. An action writing through its hard link changes the size or the
///   modification time; such an entry is removed and fetched again, never linked (never a wrong byte).
/// - At most `maxBytes`: the least recently used entries are removed first; an entry linked into a
///   running action stays valid there (a link removed from the cache does not remove the file).
public final class InputCache: Sendable {
    public let directory: String
    public let maxBytes: Int64

    /// The modification time every verified entry carries.
    static let markTime = timespec(tv_sec: 1_000_000_000, tv_nsec: 0)

    private struct Key: Hashable {
        var digest: Digest
        var executable: Bool
    }

    /// The entries, their cost their size; evicted by hand (`insert`), never by the dictionary.
    private struct State {
        var entries = LRUDictionary<Key, Int64>(capacity: .max)
        var totalBytes: Int64 { entries.totalCost }
    }

    private let state = Mutex(State())
    private let temporaryCounter = Atomic<Int>(0)

    /// Opens (creating it when absent) the cache in `directory`; the entries already there that still
    /// carry their mark are kept, anything else there is removed.
    public init(directory: String, maxBytes: Int64) throws(StrataError) {
        self.directory = directory
        self.maxBytes = maxBytes
        do {
            try FileManager.default.createDirectory(atPath: directory + "/tmp", withIntermediateDirectories: true)
        } catch {
            throw .failedPrecondition("cache directory \(directory): \(error.localizedDescription)")
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory + "/tmp")) ?? [] {
            unlink(directory + "/tmp/" + name)
        }
        var loaded = State()
        for function in DigestFunction.supported {
            let folder = directory + "/" + function.name
            for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
                let path = folder + "/" + name
                guard let key = Self.key(name, function: function), Self.isIntact(path, key) else {
                    unlink(path)
                    continue
                }
                loaded.entries.insert(key, key.digest.sizeBytes, cost: key.digest.sizeBytes)
            }
        }
        state.withLock { $0 = loaded }
    }

    public var totalBytes: Int64 { state.withLock { $0.totalBytes } }
    public var count: Int { state.withLock { $0.entries.count } }

    private func path(_ key: Key) -> String {
        "\(directory)/\(key.digest.function.name)/\(key.digest.hash)_\(key.digest.sizeBytes)\(key.executable ? "_x" : "")"
    }

    private static func key(_ name: String, function: DigestFunction) -> Key? {
        var name = Substring(name)
        let executable = name.hasSuffix("_x")
        if executable { name = name.dropLast(2) }
        let parts = name.split(separator: "_")
        guard parts.count == 2, let size = Int64(parts[1]),
              let digest = try? Digest(hash: String(parts[0]), sizeBytes: size, function: function) else { return nil }
        return Key(digest: digest, executable: executable)
    }

    /// The entry is still what was verified: a regular file of the digest's size, with the mark time
    /// and the mode it was given.
    private static func isIntact(_ path: String, _ key: Key) -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return false }
        return Int64(info.st_size) == key.digest.sizeBytes
            && info.st_mtim.tv_sec == markTime.tv_sec && info.st_mtim.tv_nsec == markTime.tv_nsec
            && info.st_mode & 0o777 == mode(key.executable)
    }

    private static func mode(_ executable: Bool) -> mode_t { executable ? 0o555 : 0o444 }

    /// Hard-links the cached file of `digest` to `destination` (copies it across file systems).
    /// False when it is not cached, or its entry was damaged (then removed).
    public func link(_ digest: Digest, executable: Bool, to destination: String) -> Bool {
        let key = Key(digest: digest, executable: executable)
        guard state.withLock({ $0.entries.contains(key) }) else { return false }
        let source = path(key)
        guard Self.isIntact(source, key) else {
            remove(key)
            return false
        }
        if Glibc.link(source, destination) == 0 {
            state.withLock { _ = $0.entries.touch(key) }
            return true
        }
        if errno == EXDEV, (try? FileManager.default.copyItem(atPath: source, toPath: destination)) != nil {
            return true
        }
        return false
    }

    /// The cached bytes of `digest` (a Directory message: small), checked against it again; nil when
    /// not cached or damaged (then removed).
    public func read(_ digest: Digest) -> Data? {
        let key = Key(digest: digest, executable: false)
        guard state.withLock({ $0.entries.touch(key) }) else { return nil }
        guard Self.isIntact(path(key), key), let data = FileManager.default.contents(atPath: path(key)),
              (try? digest.verify(data)) != nil else {
            remove(key)
            return nil
        }
        return data
    }

    private func remove(_ key: Key) {
        state.withLock { _ = $0.entries.remove(key) }
        unlink(path(key))
    }

    /// A new file name in the cache's file system, for a blob being received.
    public func temporaryPath() -> String {
        "\(directory)/tmp/\(getpid())-\(temporaryCounter.add(1, ordering: .relaxed).newValue)"
    }

    /// Makes the verified file at `temporary` (on the cache's file system) the entry of `digest`, then
    /// removes the least recently used entries beyond `maxBytes` (never this one).
    public func insert(verifiedFile temporary: String, digest: Digest, executable: Bool) throws(StrataError) {
        let key = Key(digest: digest, executable: executable)
        let destination = path(key)
        var times = [Self.markTime, Self.markTime]
        guard chmod(temporary, Self.mode(executable)) == 0, utimensat(AT_FDCWD, temporary, &times, 0) == 0 else {
            unlink(temporary)
            throw .internal("cache \(directory): cannot mark \(temporary): \(String(cString: strerror(errno)))")
        }
        try? FileManager.default.createDirectory(atPath: directory + "/" + digest.function.name, withIntermediateDirectories: true)
        guard rename(temporary, destination) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw .internal("cache \(directory): cannot add \(digest): \(reason)")
        }
        var evicted: [Key] = []
        state.withLock { state in
            state.entries.insert(key, digest.sizeBytes, cost: digest.sizeBytes)
            // The new entry is the most recent: it is the last left, and stays even when it alone is
            // over the limit (the action that fetched it links it next).
            while state.totalBytes > maxBytes, state.entries.count > 1, let oldest = state.entries.removeLeastRecent() {
                evicted.append(oldest.key)
            }
        }
        for key in evicted { unlink(path(key)) }
    }

    /// Writes `data`, already checked against `digest`, as its entry.
    public func insert(verifiedData data: Data, digest: Digest, executable: Bool) throws(StrataError) {
        let temporary = temporaryPath()
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw .internal("cache \(directory): cannot write \(temporary)")
        }
        try insert(verifiedFile: temporary, digest: digest, executable: executable)
    }
}
