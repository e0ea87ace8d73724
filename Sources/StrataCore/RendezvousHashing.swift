import Foundation

/// MurmurHash3, x86 32-bit variant: the hash BuildGrid's sharded storage ranks shards with (Python's
/// `mmh3.hash(text, signed=False)` over UTF-8), reproduced so a BuildGrid deployment's blobs stay on
/// the shard they are on when it switches to Strata.
public func murmurHash3x86_32<Bytes: Collection<UInt8>>(_ bytes: Bytes, seed: UInt32 = 0) -> UInt32 {
    let c1: UInt32 = 0xcc9e_2d51
    let c2: UInt32 = 0x1b87_3593
    var h = seed
    var block: UInt32 = 0
    var shift: UInt32 = 0
    var count = 0
    for byte in bytes {
        block |= UInt32(byte) << shift
        shift += 8
        count += 1
        if shift == 32 {
            var k = block &* c1
            k = (k << 15) | (k >> 17)
            k = k &* c2
            h ^= k
            h = (h << 13) | (h >> 19)
            h = h &* 5 &+ 0xe654_6b64
            block = 0
            shift = 0
        }
    }
    if shift > 0 {
        var k = block &* c1
        k = (k << 15) | (k >> 17)
        k = k &* c2
        h ^= k
    }
    h ^= UInt32(truncatingIfNeeded: count)
    h ^= h >> 16
    h = h &* 0x85eb_ca6b
    h ^= h >> 13
    h = h &* 0xc2b2_ae35
    h ^= h >> 16
    return h
}

/// Picks, for a key, one of several named members (shards) by rendezvous (highest random weight)
/// hashing: adding a member moves only the keys it wins, removing one moves only its own keys.
///
/// With equal weights the member with the lowest `murmurHash3x86_32("{name}\t{key}")` wins, the
/// first-listed on a tie: exactly BuildGrid 0.9.1's choice. With weights, each member's score is
/// `-ln(1 - u) / weight` for `u` the hash mapped into (0, 1) — an exponential variate with rate
/// `weight` — and the lowest score wins, so a member wins about `weight / total` of the keys.
public struct RendezvousHashing: Sendable {
    public struct Member: Sendable, Hashable {
        public var name: String
        public var weight: Double

        public init(name: String, weight: Double = 1) {
            self.name = name
            self.weight = weight
        }
    }

    public let members: [Member]
    private let equalWeights: Bool

    /// `members` must be non-empty, with distinct names and positive weights.
    public init(_ members: [Member]) {
        precondition(!members.isEmpty, "rendezvous hashing needs at least one member")
        self.members = members
        self.equalWeights = Set(members.map(\.weight)).count == 1
    }

    /// The index in `members` of the member that owns `key`.
    public func owner(of key: String) -> Int {
        var best = 0
        var bestHash = hash(0, key)
        if equalWeights {
            for index in members.indices.dropFirst() {
                let candidate = hash(index, key)
                if candidate < bestHash { best = index; bestHash = candidate }
            }
            return best
        }
        var bestScore = score(bestHash, weight: members[0].weight)
        for index in members.indices.dropFirst() {
            let candidate = score(hash(index, key), weight: members[index].weight)
            if candidate < bestScore { best = index; bestScore = candidate }
        }
        return best
    }

    private func hash(_ index: Int, _ key: String) -> UInt32 {
        murmurHash3x86_32(Array("\(members[index].name)\t\(key)".utf8))
    }

    private func score(_ hash: UInt32, weight: Double) -> Double {
        let u = (Double(hash) + 0.5) / 4_294_967_296.0
        return -log1p(-u) / weight
    }
}
