import Dispatch
import Foundation
import StrataCore

#if canImport(Glibc)
import Glibc
#endif

/// What a `!disk-storage` folder holds, in memory: each blob's digest, its bytes on disk and its place
/// in the recency order, so FindMissingBlobs, the presence check before a write and eviction never
/// touch the file system. The files are the truth: `scan` rebuilds the index from the folder at every
/// start, so a crash leaves nothing to reconcile.
///
/// Compact, because a cache folder holds millions of blobs: the entries lie in one packed array
/// (64 bytes each: the key's words, both sizes and two 32-bit links of the recency list) and an
/// open-addressing table of 32-bit entry numbers, at most half full, finds them (4 to 8 bytes per
/// blob); a `Dictionary` plus an `LRUDictionary`'s slots cost over 150 bytes per blob. A removed
/// entry's place is taken by the last entry, so the array never has holes. Recency is exact LRU (the
/// list), not an approximation: eviction's guarantees (DiskBudgetTests) are those of the old
/// `LRUDictionary`. Not thread-safe: `DiskBlobStore` guards it with its lock.
///
/// The key holds the first 256 bits of a hash; the hex of a longer hash (SHA-384, SHA-512) is kept in
/// `longHashes`, so an evicted blob's file can be named. Two such digests sharing their first 256 bits
/// and their size (a collision of SHA-384 or SHA-512) would share an entry: at worst a FindMissingBlobs
/// answer, never a byte, since reads open the file named by the whole hash.
struct DiskBlobIndex: Sendable {
    struct Entry: Sendable {
        var w0: UInt64
        var w1: UInt64
        var w2: UInt64
        var w3: UInt64
        var sizeBytes: Int64
        /// The bytes its files take on disk (a compressed file's own size), which a budget counts.
        var storedBytes: Int64
        var newer: Int32
        var older: Int32
        var function: DigestFunction

        init(_ key: DigestKey, storedBytes: Int64) {
            (w0, w1, w2, w3) = (key.w0, key.w1, key.w2, key.w3)
            sizeBytes = key.sizeBytes
            self.storedBytes = storedBytes
            newer = DiskBlobIndex.none
            older = DiskBlobIndex.none
            function = key.function
        }

        var key: DigestKey { DigestKey(w0: w0, w1: w1, w2: w2, w3: w3, sizeBytes: sizeBytes, function: function) }

        func matches(_ key: DigestKey) -> Bool {
            w0 == key.w0 && w1 == key.w1 && w2 == key.w2 && w3 == key.w3 && sizeBytes == key.sizeBytes && function == key.function
        }
    }

    /// No entry: an empty table slot, the end of the recency list.
    static let none: Int32 = -1

    private var entries: [Entry] = []
    /// Entry numbers by the key's hash, linear probing; a power of two long, at most half full.
    private var table: [Int32] = Array(repeating: DiskBlobIndex.none, count: 16)
    private var newest = DiskBlobIndex.none
    private var oldest = DiskBlobIndex.none
    private var longHashes: [DigestKey: String] = [:]
    private(set) var totalBytes: Int64 = 0

    init() {}

    var count: Int { entries.count }

    /// The heap bytes the index holds (its arrays' capacities), for the start-up figures.
    var allocatedBytes: Int {
        entries.capacity * MemoryLayout<Entry>.stride + table.capacity * MemoryLayout<Int32>.stride
    }

    func contains(_ digest: Digest) -> Bool { slot(of: digest.key).entry != nil }

    /// Makes the blob the most recently used; whether the index holds it.
    mutating func touch(_ digest: Digest) -> Bool {
        guard let entry = slot(of: digest.key).entry else { return false }
        moveToNewest(entry)
        return true
    }

    /// Records a blob as stored with `storedBytes` on disk (replacing what was recorded), the most
    /// recently used.
    mutating func insert(_ digest: Digest, storedBytes: Int64) {
        let key = digest.key
        if let entry = slot(of: key).entry {
            totalBytes += storedBytes - entries[Int(entry)].storedBytes
            entries[Int(entry)].storedBytes = storedBytes
            moveToNewest(entry)
            return
        }
        append(digest, storedBytes: storedBytes)
    }

    /// Forgets a blob; whether the index held it.
    @discardableResult
    mutating func remove(_ digest: Digest) -> Bool {
        let found = slot(of: digest.key)
        guard let entry = found.entry else { return false }
        removeEntry(entry, at: found.position)
        return true
    }

    /// Forgets the least recently used blob and returns it.
    mutating func removeLeastRecent() -> Digest? {
        guard oldest != Self.none else { return nil }
        let entry = oldest
        let digest = self.digest(of: entries[Int(entry)])
        removeEntry(entry, at: slot(of: entries[Int(entry)].key).position)
        return digest
    }

    private func digest(of entry: Entry) -> Digest {
        let key = entry.key
        guard key.function.hexLength > DigestKey.hexCapacity else { return Digest(key: key) }
        // Inserted with its whole hex, which validated then.
        return try! Digest(hash: longHashes[key]!, sizeBytes: key.sizeBytes, function: key.function)
    }

    // MARK: - The table

    private static func hash(_ key: DigestKey) -> Int {
        // The words are a hash's bits already; the size and function are mixed in so one hash stored
        // under two sizes or functions does not share a probe sequence.
        var mixed = key.w0 ^ (UInt64(bitPattern: key.sizeBytes) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(key.function.rawValue) << 57)
        mixed ^= mixed >> 31
        mixed = mixed &* 0xBF58_476D_1CE4_E5B9
        mixed ^= mixed >> 29
        return Int(truncatingIfNeeded: mixed)
    }

    /// The table position holding `key`'s entry, or the empty position where it would go.
    private func slot(of key: DigestKey) -> (position: Int, entry: Int32?) {
        table.withUnsafeBufferPointer { table in
            entries.withUnsafeBufferPointer { entries in
                let mask = table.count - 1
                var position = Self.hash(key) & mask
                while true {
                    let entry = table[position]
                    if entry == Self.none { return (position, nil) }
                    if entries[Int(entry)].matches(key) { return (position, entry) }
                    position = (position + 1) & mask
                }
            }
        }
    }

    /// Room for `count` entries without growing the table.
    mutating func reserveCapacity(_ count: Int) {
        entries.reserveCapacity(count)
        var size = table.count
        while size < count * 2 { size *= 2 }
        if size > table.count { rehash(size) }
    }

    private mutating func rehash(_ size: Int) {
        table = Array(repeating: Self.none, count: size)
        let mask = size - 1
        for index in entries.indices {
            var position = Self.hash(entries[index].key) & mask
            while table[position] != Self.none { position = (position + 1) & mask }
            table[position] = Int32(index)
        }
    }

    private mutating func append(_ digest: Digest, storedBytes: Int64) {
        precondition(entries.count < Int(Int32.max), "a disk storage index holds at most 2^31 blobs")
        if (entries.count + 1) * 2 > table.count { rehash(table.count * 2) }
        let key = digest.key
        let entry = Int32(entries.count)
        entries.append(Entry(key, storedBytes: storedBytes))
        table[slot(of: key).position] = entry
        if key.function.hexLength > DigestKey.hexCapacity { longHashes[key] = digest.hash }
        totalBytes += storedBytes
        pushNewest(entry)
    }

    /// Removes `entry`, found at table `position`: empties the position (shifting back the entries
    /// that probed past it, so no tombstone is needed) and moves the last entry into its place.
    private mutating func removeEntry(_ entry: Int32, at position: Int) {
        unlink(entry)
        let removed = entries[Int(entry)]
        totalBytes -= removed.storedBytes
        if removed.function.hexLength > DigestKey.hexCapacity { longHashes[removed.key] = nil }
        let mask = table.count - 1
        var hole = position
        var next = (hole + 1) & mask
        while table[next] != Self.none {
            let home = Self.hash(entries[Int(table[next])].key) & mask
            // An entry moves back into the hole unless its home lies after the hole (cyclically).
            if (next - home) & mask >= (next - hole) & mask {
                table[hole] = table[next]
                hole = next
            }
            next = (next + 1) & mask
        }
        table[hole] = Self.none

        let last = Int32(entries.count - 1)
        if entry != last {
            let moved = entries[Int(last)]
            table[slot(of: moved.key).position] = entry
            entries[Int(entry)] = moved
            if moved.newer != Self.none { entries[Int(moved.newer)].older = entry } else { newest = entry }
            if moved.older != Self.none { entries[Int(moved.older)].newer = entry } else { oldest = entry }
        }
        entries.removeLast()
    }

    // MARK: - The recency list

    private mutating func moveToNewest(_ entry: Int32) {
        guard newest != entry else { return }
        unlink(entry)
        pushNewest(entry)
    }

    private mutating func unlink(_ entry: Int32) {
        let (newer, older) = (entries[Int(entry)].newer, entries[Int(entry)].older)
        if newer != Self.none { entries[Int(newer)].older = older } else { newest = older }
        if older != Self.none { entries[Int(older)].newer = newer } else { oldest = newer }
        entries[Int(entry)].newer = Self.none
        entries[Int(entry)].older = Self.none
    }

    private mutating func pushNewest(_ entry: Int32) {
        entries[Int(entry)].older = newest
        entries[Int(entry)].newer = Self.none
        if newest != Self.none { entries[Int(newest)].newer = entry }
        newest = entry
        if oldest == Self.none { oldest = entry }
    }
}

// MARK: - Building the index from the folder

extension DiskBlobIndex {
    /// A blob file the scan found.
    struct ScannedFile: Sendable {
        var digest: Digest
        var storedBytes: Int64
        /// Its last access or modification, when asked for; 0 otherwise.
        var time: Double
    }

    /// Reads every fan-out folder of `casDirectory` (all digest functions, plain and `.zst` files),
    /// several folders at once. The size of a plain file is in its name, so it is not `stat`ed unless
    /// `times` (an evicting budget orders the blobs by their files' access or modification times) or
    /// `compressedSizes` (a budget counts a compressed file's own size) need it. Contents are never
    /// read. The least recently used comes first when `times`, in folder order otherwise.
    static func scan(_ casDirectory: String, times: Bool, compressedSizes: Bool) -> DiskBlobIndex {
        let folders = DiskBlobStore.fanOutDirectories(casDirectory)
        let found = UnsafeMutableBufferPointer<[ScannedFile]>.allocate(capacity: folders.count)
        found.initialize(repeating: [])
        defer { found.deinitialize().deallocate() }
        // Each iteration writes only its own element.
        nonisolated(unsafe) let results = found
        DispatchQueue.concurrentPerform(iterations: folders.count) { index in
            results[index] = scanFolder(folders[index].directory, function: folders[index].function, times: times, compressedSizes: compressedSizes)
        }
        var index = DiskBlobIndex()
        index.reserveCapacity(found.reduce(0) { $0 + $1.count })
        if times {
            for file in found.joined().sorted(by: { $0.time < $1.time }) { index.add(file) }
        } else {
            // Folder by folder, each list released once added: no second copy of them all.
            for folder in found.indices {
                for file in found[folder] { index.add(file) }
                found[folder] = []
            }
        }
        return index
    }

    private mutating func add(_ file: ScannedFile) {
        // A blob in both a plain and a compressed file (compression switched while a copy was being
        // written): one entry counting both files, which eviction removes together.
        if let entry = slot(of: file.digest.key).entry {
            totalBytes += file.storedBytes
            entries[Int(entry)].storedBytes += file.storedBytes
            return
        }
        append(file.digest, storedBytes: file.storedBytes)
    }

    /// The blob files of one fan-out folder. A name that is not `{hash}_{size}` or `{hash}_{size}.zst`
    /// for `function` (lower-case hex, the size in decimal as `path(of:)` writes it) is skipped, and so is anything but a regular file. Without a `stat`, a plain file
    /// of the wrong size (a damaged disk) is listed: a read finds it (DATA_LOSS) and `strata scrub` too.
    static func scanFolder(_ directory: String, function: DigestFunction, times: Bool, compressedSizes: Bool) -> [ScannedFile] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        let fd = dirfd(dir)
        var result: [ScannedFile] = []
        let suffix = Array(DiskBlobStore.compressedSuffix.utf8)
        while let entry = readdir(dir) {
            let type = entry.pointee.d_type
            if type != UInt8(DT_REG) && type != UInt8(DT_UNKNOWN) && type != UInt8(DT_LNK) { continue }
            let scanned: ScannedFile? = withUnsafeBytes(of: &entry.pointee.d_name) { raw -> ScannedFile? in
                let length = raw.firstIndex(of: 0) ?? raw.count
                var name = UnsafeRawBufferPointer(rebasing: raw[..<length])
                let compressed = name.count > suffix.count && name.suffix(suffix.count).elementsEqual(suffix)
                if compressed { name = UnsafeRawBufferPointer(rebasing: name.dropLast(suffix.count)) }
                let hexLength = function.hexLength
                // At most 18 digits (no overflow), no leading zero: `_007` is not the name of a blob of 7 bytes.
                guard name.count > hexLength + 1, name[hexLength] == UInt8(ascii: "_"), name.count - hexLength - 1 <= 18,
                      name.count == hexLength + 2 || name[hexLength + 1] != UInt8(ascii: "0")
                else { return nil }
                var size: Int64 = 0
                for byte in name[(hexLength + 1)...] {
                    guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
                    size = size * 10 + Int64(byte - UInt8(ascii: "0"))
                }
                guard let digest = try? Digest(hex: UnsafeRawBufferPointer(rebasing: name[..<hexLength]), sizeBytes: size, function: function) else {
                    return nil
                }
                var file = ScannedFile(digest: digest, storedBytes: size, time: 0)
                if times || (compressed && compressedSizes) || type != UInt8(DT_REG) {
                    var info = stat()
                    guard fstatat(fd, raw.baseAddress!.assumingMemoryBound(to: CChar.self), &info, 0) == 0,
                          (info.st_mode & S_IFMT) == S_IFREG,
                          compressed || Int64(info.st_size) == size
                    else { return nil }
                    if compressed { file.storedBytes = Int64(info.st_size) }
                    let accessed = Double(info.st_atim.tv_sec) + Double(info.st_atim.tv_nsec) / 1e9
                    let modified = Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
                    file.time = max(accessed, modified)
                }
                return file
            }
            if let scanned { result.append(scanned) }
        }
        return result
    }
}
