import Foundation
import StrataCore
import StrataStorage

/// `!redis-index`: which blobs a backing storage holds, their sizes and last access times, in Redis.
///
/// Layout, under `prefix`:
/// - `{prefix}access`: a sorted set, member `{hash}_{size}`, score = last access in milliseconds since
///   1970. The size is part of the member, so presence, size and access time are one entry, and the
///   least recently used blobs are a range query (`ZRANGEBYSCORE`), never a keyspace scan.
/// - `{prefix}totals`: a hash with the fields `bytes` and `blobs`, changed only by the scripts that add
///   or remove members, in the same atomic step: a blob counts once however many writers record it.
///
/// findMissing is answered from the index alone, in one round trip per call. Every mutation is a Lua
/// script, so each is atomic and idempotent (a retried call does not count twice).
public final class RedisIndex: EnumerableIndex {
    public let backingStore: any BlobStore
    public let client: RedisClient
    public let prefix: String
    /// An access time younger than this is not rewritten by findMissing or read: bounds write load
    /// on Redis for blobs in constant use. Zero refreshes on every access.
    public let refreshAccessTimeOlderThan: Duration
    private let clock: @Sendable () -> Date

    /// Members per script call: keeps each script's time inside Redis short.
    static let membersPerScript = 1000

    public init(
        backingStore: any BlobStore, client: RedisClient, prefix: String = "strata:index:",
        refreshAccessTimeOlderThan: Duration = .zero, clock: @escaping @Sendable () -> Date = Date.init
    ) {
        self.backingStore = backingStore
        self.client = client
        self.prefix = prefix
        self.refreshAccessTimeOlderThan = refreshAccessTimeOlderThan
        self.clock = clock
    }

    var accessKey: String { prefix + "access" }
    var totalsKey: String { prefix + "totals" }

    public var maximumBlobSize: Int64? { backingStore.maximumBlobSize }

    // MARK: BlobStore

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        let indexed = try await touch(candidates)
        return zip(candidates, indexed).filter { !$0.1 }.map(\.0)
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        if digest.isEmpty { return try await backingStore.read(digest, offset: offset, limit: limit) }
        let body: BlobBody
        do {
            body = try await backingStore.read(digest, offset: offset, limit: limit)
        } catch let error as StrataError where error.code == .notFound {
            try await forget([digest])
            throw error
        }
        _ = try await touch([digest])
        return body
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        try await backingStore.write(digest, body: body)
        if !digest.isEmpty { try await record([digest]) }
    }

    public func delete(_ digests: [Digest]) async throws {
        let indexed = digests.filter { !$0.isEmpty }.uniqued()
        try await forget(indexed)
        try await backingStore.delete(digests)
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        var results = await backingStore.readBatch(digests)
        var found: [Digest] = []
        var lost: [Digest] = []
        for (digest, result) in zip(digests, results) where !digest.isEmpty {
            switch result {
            case .success: found.append(digest)
            case .failure(let error) where error.code == .notFound: lost.append(digest)
            case .failure: break
            }
        }
        do {
            let commands = touchCommands(found.uniqued()) + forgetCommands(lost.uniqued())
            for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
        } catch {
            let failure = StrataError.from(error)
            for index in results.indices where !digests[index].isEmpty { results[index] = .failure(failure) }
        }
        return results
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        var results = await backingStore.writeBatch(blobs)
        let stored = zip(blobs, results).compactMap { blob, result -> Digest? in
            if case .success = result, !blob.digest.isEmpty { return blob.digest }
            return nil
        }
        do {
            try await record(stored.uniqued())
        } catch {
            // Stored but not indexed: a client told OK would later hear "missing" and upload again.
            let failure = StrataError.from(error)
            for index in results.indices where !blobs[index].digest.isEmpty {
                if case .success = results[index] { results[index] = .failure(failure) }
            }
        }
        return results
    }

    // MARK: IndexedBlobStore

    public func totals() async throws -> IndexTotals {
        let reply = try await client.send("HMGET", totalsKey, "bytes", "blobs")
        guard let fields = reply.array, fields.count == 2 else { throw unexpected(reply, "HMGET \(totalsKey)") }
        func value(_ field: RedisReply) throws -> Int64 {
            if case .null = field { return 0 }
            guard let number = field.integer else { throw unexpected(reply, "HMGET \(totalsKey)") }
            return number
        }
        return IndexTotals(bytes: try value(fields[0]), blobs: try value(fields[1]))
    }

    public func leastRecentlyAccessed(before cutoff: Date, limit: Int) async throws -> [IndexEntry] {
        guard limit > 0 else { return [] }
        let reply = try await client.send(
            "ZRANGEBYSCORE", accessKey, "-inf", "(\(milliseconds(cutoff))", "WITHSCORES", "LIMIT", "0", String(limit))
        guard let flat = reply.array, flat.count.isMultiple(of: 2) else { throw unexpected(reply, "ZRANGEBYSCORE") }
        return try stride(from: 0, to: flat.count, by: 2).map { index in
            guard let member = flat[index].string, let digest = Self.digest(member: member),
                  let scoreText = flat[index + 1].string, let score = Double(scoreText)
            else { throw unexpected(reply, "ZRANGEBYSCORE") }
            return IndexEntry(digest: digest, accessed: Date(timeIntervalSince1970: score / 1000))
        }
    }

    public func removeEntries(_ digests: [Digest], notAccessedSince cutoff: Date) async throws -> [Digest] {
        let candidates = digests.filter { !$0.isEmpty }.uniqued()
        let commands = chunks(candidates).map { chunk in
            RedisCommand.script(
                Self.removeIfNotAccessedSince, keys: [accessKey, totalsKey],
                arguments: [String(milliseconds(cutoff))] + chunk.map(Self.member))
        }
        var removed = Set<String>()
        for (reply, command) in zip(try await client.pipeline(commands), commands) {
            guard let members = try client.checked(reply, command).array else { throw unexpected(reply, "the removal script") }
            for member in members {
                guard let text = member.string else { throw unexpected(reply, "the removal script") }
                removed.insert(text)
            }
        }
        return candidates.filter { removed.contains(Self.member($0)) }
    }

    // MARK: EnumerableIndex

    public func forEachEntryPage(pageSize: Int, _ body: ([IndexEntry]) async throws -> Void) async throws {
        var cursor = "0"
        repeat {
            let reply = try await client.send("ZSCAN", accessKey, cursor, "COUNT", String(max(pageSize, 1)))
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string,
                  let flat = parts[1].array, flat.count.isMultiple(of: 2)
            else { throw unexpected(reply, "ZSCAN") }
            let entries = try stride(from: 0, to: flat.count, by: 2).compactMap { index -> IndexEntry? in
                guard let member = flat[index].string, let scoreText = flat[index + 1].string, let score = Double(scoreText)
                else { throw unexpected(reply, "ZSCAN") }
                // A member that names no digest was not written by Strata: not ours to report.
                guard let digest = Self.digest(member: member) else { return nil }
                return IndexEntry(digest: digest, accessed: Date(timeIntervalSince1970: score / 1000))
            }
            if !entries.isEmpty { try await body(entries) }
            cursor = next
        } while cursor != "0"
    }

    public func hasEntries(_ digests: [Digest]) async throws -> [Bool] {
        let commands = chunks(digests).map { chunk in RedisCommand(["ZMSCORE", accessKey] + chunk.map(Self.member)) }
        var flags: [Bool] = []
        flags.reserveCapacity(digests.count)
        for (reply, command) in zip(try await client.pipeline(commands), commands) {
            guard let scores = try client.checked(reply, command).array else { throw unexpected(reply, "ZMSCORE") }
            for score in scores {
                if case .null = score { flags.append(false) } else { flags.append(true) }
            }
        }
        guard flags.count == digests.count else {
            throw StrataError.internal("Redis index at \(client.endpoint): ZMSCORE answered \(flags.count) scores for \(digests.count) blobs")
        }
        return flags
    }

    // MARK: Index operations

    /// Whether each digest is indexed; refreshes the access time of those that are.
    func touch(_ digests: [Digest]) async throws -> [Bool] {
        let commands = touchCommands(digests)
        var indexed: [Bool] = []
        indexed.reserveCapacity(digests.count)
        for (reply, command) in zip(try await client.pipeline(commands), commands) {
            guard let flags = try client.checked(reply, command).array else { throw unexpected(reply, "the access script") }
            for flag in flags {
                guard let value = flag.integer else { throw unexpected(reply, "the access script") }
                indexed.append(value == 1)
            }
        }
        guard indexed.count == digests.count else {
            throw StrataError.internal("Redis index at \(client.endpoint): the access script answered \(indexed.count) flags for \(digests.count) blobs")
        }
        return indexed
    }

    private func touchCommands(_ digests: [Digest]) -> [RedisCommand] {
        let now = clock()
        let (seconds, attoseconds) = refreshAccessTimeOlderThan.components
        let refreshBefore = milliseconds(now - (Double(seconds) + Double(attoseconds) / 1e18))
        return chunks(digests).map { chunk in
            RedisCommand.script(
                Self.touch, keys: [accessKey],
                arguments: [String(milliseconds(now)), String(refreshBefore)] + chunk.map(Self.member))
        }
    }

    /// Adds the digests (or refreshes their access time), counting each new one in the totals.
    func record(_ digests: [Digest]) async throws {
        let now = String(milliseconds(clock()))
        let commands = chunks(digests).map { chunk in
            RedisCommand.script(Self.record, keys: [accessKey, totalsKey], arguments: [now] + chunk.map(Self.member))
        }
        for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
    }

    /// Removes the digests' entries, uncounting each one that was there.
    func forget(_ digests: [Digest]) async throws {
        let commands = forgetCommands(digests)
        for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
    }

    private func forgetCommands(_ digests: [Digest]) -> [RedisCommand] {
        chunks(digests).map { chunk in
            RedisCommand.script(Self.forget, keys: [accessKey, totalsKey], arguments: chunk.map(Self.member))
        }
    }

    private func chunks(_ digests: [Digest]) -> [ArraySlice<Digest>] {
        stride(from: 0, to: digests.count, by: Self.membersPerScript).map {
            digests[$0..<min($0 + Self.membersPerScript, digests.count)]
        }
    }

    private func milliseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
    }

    private func unexpected(_ reply: RedisReply, _ what: String) -> StrataError {
        .internal("Redis index at \(client.endpoint) (prefix \"\(prefix)\"): unexpected reply to \(what): \(reply)")
    }

    static func member(_ digest: Digest) -> String { "\(digest.hash)_\(digest.sizeBytes)" }

    static func digest(member: String) -> Digest? {
        guard let separator = member.lastIndex(of: "_"), let size = Int64(member[member.index(after: separator)...])
        else { return nil }
        let hash = String(member[..<separator])
        guard let function = try? DigestFunction.resolve(protoValue: 0, hash: hash) else { return nil }
        return try? Digest(hash: hash, sizeBytes: size, function: function)
    }

    // MARK: Scripts
    // Sizes go to HINCRBY as the digits matched from the member, never through a Lua number, whose
    // string form would turn large values into "1e+15".

    /// KEYS: access, totals. ARGV: now, members. Returns how many members were new.
    static let record = RedisScript("""
        local added = 0
        for i = 2, #ARGV do
          if redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[i]) == 1 then
            added = added + 1
            redis.call('HINCRBY', KEYS[2], 'bytes', string.match(ARGV[i], '_(%d+)$'))
            redis.call('HINCRBY', KEYS[2], 'blobs', 1)
          end
        end
        return added
        """)

    /// KEYS: access. ARGV: now, refresh-before, members. Returns 1 (indexed) or 0 per member, and moves
    /// the access time of indexed members last accessed before refresh-before to now.
    static let touch = RedisScript("""
        local refreshBefore = tonumber(ARGV[2])
        local indexed = {}
        for i = 3, #ARGV do
          local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
          if score then
            indexed[#indexed + 1] = 1
            if tonumber(score) < refreshBefore then
              redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[1], ARGV[i])
            end
          else
            indexed[#indexed + 1] = 0
          end
        end
        return indexed
        """)

    /// KEYS: access, totals. ARGV: members. Returns how many were removed.
    static let forget = RedisScript("""
        local removed = 0
        for i = 1, #ARGV do
          if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
            removed = removed + 1
            redis.call('HINCRBY', KEYS[2], 'bytes', '-' .. string.match(ARGV[i], '_(%d+)$'))
            redis.call('HINCRBY', KEYS[2], 'blobs', -1)
          end
        end
        return removed
        """)

    /// KEYS: access, totals. ARGV: cutoff, members. Removes the members last accessed before the
    /// cutoff, checked here so a blob used since the caller listed it keeps its entry; returns them.
    static let removeIfNotAccessedSince = RedisScript("""
        local cutoff = tonumber(ARGV[1])
        local removed = {}
        for i = 2, #ARGV do
          local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
          if score and tonumber(score) < cutoff then
            redis.call('ZREM', KEYS[1], ARGV[i])
            redis.call('HINCRBY', KEYS[2], 'bytes', '-' .. string.match(ARGV[i], '_(%d+)$'))
            redis.call('HINCRBY', KEYS[2], 'blobs', -1)
            removed[#removed + 1] = ARGV[i]
          end
        end
        return removed
        """)
}
