import Foundation
import Logging
import StrataCore
import StrataStorage

/// `!redis-index`: which blobs a backing storage holds, their sizes and last access times, in Redis.
///
/// Layout, under `prefix`:
/// - `{prefix}access`: a sorted set, member `{hash}_{size}` (`{function}/{hash}_{size}` for digest
///   functions other than SHA-256, see `Digest.storageName`), score = last access in milliseconds since
///   1970. The size is part of the member, so presence, size and access time are one entry, and the
///   least recently used blobs are a range query (`ZRANGEBYSCORE`), never a keyspace scan.
/// - `{prefix}totals`: a hash with the fields `bytes` and `blobs`, changed only by the scripts that add
///   or remove members, in the same atomic step: a blob counts once however many writers record it.
/// - `{prefix}writing` (sorted set, member → lease end in ms of Redis's clock) and `{prefix}writers`
///   (sorted set of `{member}|{token}`, one per write in progress): the "being written" marks;
///   `{prefix}deleting` (sorted set, member → lease end) and `{prefix}deleters` (hash, member → the
///   token of the removal that set it): the "being deleted" marks (see `IndexedBlobStore`). Leases use
///   Redis's own clock, so servers and cleaners with skewed clocks agree on them.
///
/// findMissing is answered from the index alone, in one round trip per call. Every mutation is a Lua
/// script, so each is atomic and idempotent: the client sends a pipeline again when the connection
/// breaks before the answer, and Redis may have run it already. Writes and removals carry a token for
/// that: a repeated start or end of a write changes nothing, and a repeated removal answers the blobs
/// the first one took.
public final class RedisIndex: EnumerableIndex {
    public let backingStore: any BlobStore
    public let client: RedisClient
    public let prefix: String
    /// An access time younger than this is not rewritten by findMissing or read: bounds write load
    /// on Redis for blobs in constant use. Zero refreshes on every access.
    public let refreshAccessTimeOlderThan: Duration
    private let clock: @Sendable () -> Date
    private let refreshFailures: AccessTimeRefreshFailures

    /// Members per script call: keeps each script's time inside Redis short.
    static let membersPerScript = 1000

    /// How long the "being written" and "being deleted" marks hold if never cleared.
    public let writeLease: Duration
    public let deletionLease: Duration

    public init(
        backingStore: any BlobStore, client: RedisClient, prefix: String = "strata:index:",
        refreshAccessTimeOlderThan: Duration = .zero, clock: @escaping @Sendable () -> Date = Date.init,
        writeLease: Duration = IndexLeases.writing, deletionLease: Duration = IndexLeases.deleting
    ) {
        self.backingStore = backingStore
        self.client = client
        self.prefix = prefix
        self.refreshAccessTimeOlderThan = refreshAccessTimeOlderThan
        self.clock = clock
        self.writeLease = writeLease
        self.deletionLease = deletionLease
        self.refreshFailures = AccessTimeRefreshFailures(
            index: "Redis index at \(client.endpoint) (\(prefix))", logger: Logger(label: "strata.redis.index"))
    }

    var accessKey: String { prefix + "access" }
    var totalsKey: String { prefix + "totals" }
    var writingKey: String { prefix + "writing" }
    var writersKey: String { prefix + "writers" }
    var deletingKey: String { prefix + "deleting" }
    var deletersKey: String { prefix + "deleters" }

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
            do { try await forgetLost([digest]) } catch { refreshFailures.report(error, "dropping the entry of lost blob \(digest)") }
            throw error
        }
        // The read has its bytes: a Redis hiccup here costs an access time, never the answer.
        do { _ = try await touch([digest]) } catch { refreshFailures.report(error, "refreshing the access time of \(digest)") }
        // A copy found corrupt while it streams is removed by the storage: its entry goes too.
        return body.onNotFound { try? await self.forgetLost([digest]) }
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        if digest.isEmpty { return try await backingStore.write(digest, body: body) }
        let write = WriteToken()
        try await beginWriting([digest], write)
        do {
            try await backingStore.write(digest, body: body)
        } catch {
            try? await endWriting([digest], write)
            throw error
        }
        try await record([digest], write)
    }

    /// Deletes what nobody is writing right now; a blob being written stays, as if written after the
    /// delete.
    public func delete(_ digests: [Digest]) async throws {
        let removed = try await removeEntries(digests, notAccessedSince: .distantFuture)
        do {
            try await backingStore.delete(removed)
        } catch {
            try? await finishDeleting(removed)
            throw error
        }
        try await finishDeleting(removed)
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
        // The reads have their bytes: a Redis hiccup here costs access times, never the answers.
        do {
            let commands = touchCommands(found.uniqued()) + forgetLostCommands(lost.uniqued())
            for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
        } catch {
            refreshFailures.report(error, "refreshing the access times of \(found.count) blobs read")
        }
        return results
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        // One mark per digest, however often the batch names it.
        let marked = blobs.map(\.digest).filter { !$0.isEmpty }.uniqued()
        let write = WriteToken()
        do {
            try await beginWriting(marked, write)
        } catch {
            return [Result](repeating: .failure(StrataError.from(error)), count: blobs.count)
        }
        var results = await backingStore.writeBatch(blobs)
        var stored = Set<Digest>()
        var failed = Set<Digest>()
        for (blob, result) in zip(blobs, results) where !blob.digest.isEmpty {
            switch result {
            case .success: stored.insert(blob.digest)
            case .failure: failed.insert(blob.digest)
            }
        }
        // A digest named twice, stored once and refused once, is stored.
        failed.subtract(stored)
        if !failed.isEmpty { try? await endWriting(marked.filter(failed.contains), write) }
        do {
            try await record(marked.filter(stored.contains), write)
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
        let token = UUID().uuidString
        let commands = chunks(candidates).map { chunk in
            RedisCommand.script(
                Self.removeIfNotAccessedSince, keys: [accessKey, totalsKey, writingKey, deletingKey, deletersKey],
                arguments: [String(milliseconds(cutoff)), String(deletionLease.milliseconds), token] + chunk.map(Self.member))
        }
        return try await chosenMembers(of: candidates, commands, "the removal script")
    }

    public func finishDeleting(_ digests: [Digest]) async throws {
        let members = digests.filter { !$0.isEmpty }.uniqued().map(Self.member)
        // Also sweeps marks whose lease ran out (their holder crashed), a bounded number per call.
        var commands: [RedisCommand] = []
        for start in stride(from: 0, to: members.count, by: Self.membersPerScript) {
            let chunk = members[start..<min(start + Self.membersPerScript, members.count)]
            commands.append(RedisCommand(["ZREM", deletingKey] + chunk))
            commands.append(RedisCommand(["HDEL", deletersKey] + chunk))
        }
        commands.append(RedisCommand.script(
            Self.sweepExpiredMarks, keys: [writingKey, writersKey, deletingKey, deletersKey], arguments: []))
        for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
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

    public func claimOrphans(_ digests: [Digest]) async throws -> [Digest] {
        let candidates = digests.filter { !$0.isEmpty }.uniqued()
        let token = UUID().uuidString
        let commands = chunks(candidates).map { chunk in
            RedisCommand.script(
                Self.claimOrphans, keys: [accessKey, writingKey, deletingKey, deletersKey],
                arguments: [String(deletionLease.milliseconds), token] + chunk.map(Self.member))
        }
        return try await chosenMembers(of: candidates, commands, "the orphan claim script")
    }

    /// Runs scripts that each answer the members they acted on; returns those digests, in order.
    private func chosenMembers(of candidates: [Digest], _ commands: [RedisCommand], _ what: String) async throws -> [Digest] {
        var chosen = Set<String>()
        for (reply, command) in zip(try await client.pipeline(commands), commands) {
            guard let members = try client.checked(reply, command).array else { throw unexpected(reply, what) }
            for member in members {
                guard let text = member.string else { throw unexpected(reply, what) }
                chosen.insert(text)
            }
        }
        return candidates.filter { chosen.contains(Self.member($0)) }
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
        let refreshBefore = milliseconds(now - refreshAccessTimeOlderThan.timeInterval)
        return chunks(digests).map { chunk in
            RedisCommand.script(
                Self.touch, keys: [accessKey],
                arguments: [String(milliseconds(now)), String(refreshBefore)] + chunk.map(Self.member))
        }
    }

    /// Names one write (or batch write) in the "being written" marks, so that a script Redis ran but
    /// whose answer was lost, and which the client therefore sends again, changes nothing the second time.
    struct WriteToken {
        let value = UUID().uuidString
    }

    /// Marks the digests "being written" by `write`, waiting while any is "being deleted".
    func beginWriting(_ digests: [Digest], _ write: WriteToken) async throws {
        let lease = String(writeLease.milliseconds)
        try await waitingOutDeletions(digests) { pending in
            let commands = chunks(pending).map { chunk in
                RedisCommand.script(
                    Self.beginWriting, keys: [writingKey, writersKey, deletingKey, deletersKey], arguments: [lease, write.value] + chunk.map(Self.member))
            }
            var refused: [Digest] = []
            var offset = 0
            for (reply, command) in zip(try await client.pipeline(commands), commands) {
                guard let flags = try client.checked(reply, command).array else { throw unexpected(reply, "the write mark script") }
                for flag in flags {
                    guard let granted = flag.integer, offset < pending.count else { throw unexpected(reply, "the write mark script") }
                    if granted == 0 { refused.append(pending[offset]) }
                    offset += 1
                }
            }
            guard offset == pending.count else { throw unexpected(.null, "the write mark script") }
            return refused
        }
    }

    /// Ends writes that failed: their marks go without recording the blobs.
    func endWriting(_ digests: [Digest], _ write: WriteToken) async throws {
        let commands = chunks(digests).map { chunk in
            RedisCommand.script(Self.endWriting, keys: [writingKey, writersKey], arguments: [write.value] + chunk.map(Self.member))
        }
        for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
    }

    /// Adds the digests (or refreshes their access time), counting each new one in the totals, and ends
    /// their writes.
    func record(_ digests: [Digest], _ write: WriteToken) async throws {
        let now = String(milliseconds(clock()))
        let commands = chunks(digests).map { chunk in
            RedisCommand.script(
                Self.record, keys: [accessKey, totalsKey, writingKey, writersKey], arguments: [now, write.value] + chunk.map(Self.member))
        }
        for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
    }

    /// Removes the entries of blobs the storage has lost, uncounting each one that was there; a blob
    /// being written right now keeps its entry (its write is storing it again).
    func forgetLost(_ digests: [Digest]) async throws {
        let commands = forgetLostCommands(digests)
        for (reply, command) in zip(try await client.pipeline(commands), commands) { _ = try client.checked(reply, command) }
    }

    private func forgetLostCommands(_ digests: [Digest]) -> [RedisCommand] {
        chunks(digests).map { chunk in
            RedisCommand.script(Self.forgetLost, keys: [accessKey, totalsKey, writingKey], arguments: chunk.map(Self.member))
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

    /// `{hash}_{size}` for SHA-256 (the layout since the start), `{function}/{hash}_{size}` for the
    /// other digest functions (`Digest.storageName`): the size stays last, where the scripts read it.
    static func member(_ digest: Digest) -> String { digest.storageName }

    static func digest(member: String) -> Digest? { Digest(storageName: member) }

    // MARK: Scripts
    // Sizes go to HINCRBY as the digits matched from the member, never through a Lua number, whose
    // string form would turn large values into "1e+15".

    // Leases are compared with Redis's clock: `redisNow` is its time in milliseconds. Writes in progress
    // are the members `{member}|{token}` of the writers set (all scored 0, so one blob's writers are a
    // lexicographic range): starting or ending a write twice with one token changes nothing.
    private static let redisNow = """
        local clock = redis.call('TIME')
        local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
        local function live(key, member)
          local leaseEnd = redis.call('ZSCORE', key, member)
          return leaseEnd and tonumber(leaseEnd) > now
        end
        local function dropWriters(writers, member)
          redis.call('ZREMRANGEBYLEX', writers, '[' .. member .. '|', '(' .. member .. '}')
        end
        local function endWrite(writing, writers, member, token)
          redis.call('ZREM', writers, member .. '|' .. token)
          if #redis.call('ZRANGEBYLEX', writers, '[' .. member .. '|', '(' .. member .. '}', 'LIMIT', 0, 1) == 0 then
            redis.call('ZREM', writing, member)
          end
        end

        """

    /// KEYS: access, totals, writing, writers. ARGV: now, token, members. Records the members (ending
    /// the token's write of each); returns how many were new.
    static let record = RedisScript(redisNow + """
        local added = 0
        for i = 3, #ARGV do
          if redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[i]) == 1 then
            added = added + 1
            redis.call('HINCRBY', KEYS[2], 'bytes', string.match(ARGV[i], '_(%d+)$'))
            redis.call('HINCRBY', KEYS[2], 'blobs', 1)
          end
          endWrite(KEYS[3], KEYS[4], ARGV[i], ARGV[2])
        end
        return added
        """)

    /// KEYS: writing, writers, deleting, deleters. ARGV: lease in ms, token, members. Marks each member not being
    /// deleted as being written by the token; returns 1 (marked) or 0 (being deleted) per member.
    static let beginWriting = RedisScript(redisNow + """
        local leaseEnd = now + tonumber(ARGV[1])
        local granted = {}
        for i = 3, #ARGV do
          if live(KEYS[3], ARGV[i]) then
            granted[#granted + 1] = 0
          else
            redis.call('ZREM', KEYS[3], ARGV[i])
            redis.call('HDEL', KEYS[4], ARGV[i])
            -- Writers whose lease ran out crashed: they no longer hold the mark.
            if not live(KEYS[1], ARGV[i]) then dropWriters(KEYS[2], ARGV[i]) end
            redis.call('ZADD', KEYS[2], 0, ARGV[i] .. '|' .. ARGV[2])
            redis.call('ZADD', KEYS[1], 'GT', leaseEnd, ARGV[i])
            granted[#granted + 1] = 1
          end
        end
        return granted
        """)

    /// KEYS: writing, writers. ARGV: token, members. Ends the token's write of each member without
    /// recording it.
    static let endWriting = RedisScript(redisNow + """
        for i = 2, #ARGV do endWrite(KEYS[1], KEYS[2], ARGV[i], ARGV[1]) end
        return 0
        """)

    /// KEYS: writing, writers, deleting, deleters. Drops up to 1000 marks of each kind whose lease ended.
    static let sweepExpiredMarks = RedisScript(redisNow + """
        local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
        for _, member in ipairs(dead) do
          redis.call('ZREM', KEYS[1], member)
          dropWriters(KEYS[2], member)
        end
        local deleting = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
        for _, member in ipairs(deleting) do
          redis.call('ZREM', KEYS[3], member)
          redis.call('HDEL', KEYS[4], member)
        end
        return #dead + #deleting
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

    /// KEYS: access, totals, writing. ARGV: members. Removes those not being written; returns how many
    /// were removed.
    static let forgetLost = RedisScript(redisNow + """
        local removed = 0
        for i = 1, #ARGV do
          if not live(KEYS[3], ARGV[i]) and redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
            removed = removed + 1
            redis.call('HINCRBY', KEYS[2], 'bytes', '-' .. string.match(ARGV[i], '_(%d+)$'))
            redis.call('HINCRBY', KEYS[2], 'blobs', -1)
          end
        end
        return removed
        """)

    /// KEYS: access, totals, writing, deleting, deleters. ARGV: cutoff, deletion lease in ms, token,
    /// members. Removes the members last accessed before the cutoff and not being written, checked here
    /// so a blob used since the caller listed it keeps its entry, and marks them being deleted by the
    /// token; returns them, and those this token marked already (the call sent again).
    static let removeIfNotAccessedSince = RedisScript(redisNow + """
        local cutoff = tonumber(ARGV[1])
        local leaseEnd = now + tonumber(ARGV[2])
        local removed = {}
        for i = 4, #ARGV do
          local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
          if score and tonumber(score) < cutoff and not live(KEYS[3], ARGV[i]) then
            redis.call('ZREM', KEYS[1], ARGV[i])
            redis.call('HINCRBY', KEYS[2], 'bytes', '-' .. string.match(ARGV[i], '_(%d+)$'))
            redis.call('HINCRBY', KEYS[2], 'blobs', -1)
            redis.call('ZADD', KEYS[4], leaseEnd, ARGV[i])
            redis.call('HSET', KEYS[5], ARGV[i], ARGV[3])
            removed[#removed + 1] = ARGV[i]
          elseif not score and live(KEYS[4], ARGV[i]) and redis.call('HGET', KEYS[5], ARGV[i]) == ARGV[3] then
            removed[#removed + 1] = ARGV[i]
          end
        end
        return removed
        """)

    /// KEYS: access, writing, deleting, deleters. ARGV: deletion lease in ms, token, members. Marks being
    /// deleted by the token the members with no entry that nobody is writing or deleting; returns them,
    /// and those this token marked already (the call sent again).
    static let claimOrphans = RedisScript(redisNow + """
        local leaseEnd = now + tonumber(ARGV[1])
        local claimed = {}
        for i = 3, #ARGV do
          if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
            if not live(KEYS[2], ARGV[i]) and not live(KEYS[3], ARGV[i]) then
              redis.call('ZADD', KEYS[3], leaseEnd, ARGV[i])
              redis.call('HSET', KEYS[4], ARGV[i], ARGV[2])
              claimed[#claimed + 1] = ARGV[i]
            elseif live(KEYS[3], ARGV[i]) and redis.call('HGET', KEYS[4], ARGV[i]) == ARGV[2] then
              claimed[#claimed + 1] = ARGV[i]
            end
          end
        end
        return claimed
        """)
}
