import StrataCore
import Testing

@Suite struct RendezvousHashingTests {
    /// Values from Python's `mmh3.hash(text, signed=False)` (mmh3 5.3.1, the library BuildGrid uses).
    static let pythonValues: [(String, UInt32)] = [
        ("", 0), ("a", 1_009_084_850), ("hello", 613_153_351), ("abcd", 1_139_631_978),
        ("abcde", 3_902_511_862), ("été", 865_297_935),
        ("shard-a\t" + String(repeating: "0", count: 64), 1_685_852_661),
        ("shard-b\te3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 535_048_279),
    ]

    @Test(arguments: pythonValues)
    func murmurMatchesPython(_ text: String, _ expected: UInt32) {
        #expect(murmurHash3x86_32(Array(text.utf8)) == expected)
    }

    @Test func equalWeightsPickTheLowestHashLikeBuildGrid() {
        let names = ["shard-a", "shard-b", "shard-c"]
        let hashing = RendezvousHashing(names.map { .init(name: $0) })
        for i in 0..<200 {
            let key = String(repeating: String(i % 10), count: 64)
            let hashes = names.map { murmurHash3x86_32(Array("\($0)\t\(key)".utf8)) }
            #expect(hashing.owner(of: key) == hashes.firstIndex(of: hashes.min()!)!)
        }
    }

    @Test func addingAMemberMovesOnlyItsShare() {
        let keys = (0..<20_000).map { "key-\($0)" }
        let three = RendezvousHashing([.init(name: "a"), .init(name: "b"), .init(name: "c")])
        let four = RendezvousHashing([.init(name: "a"), .init(name: "b"), .init(name: "c"), .init(name: "d")])
        var moved = 0
        for key in keys {
            let before = three.owner(of: key), after = four.owner(of: key)
            if before != after {
                moved += 1
                #expect(after == 3, "a key moved between two old members")
            }
        }
        // d should win about a quarter of the keys.
        #expect(abs(Double(moved) / Double(keys.count) - 0.25) < 0.02)
    }

    @Test func removingAMemberMovesOnlyItsKeys() {
        let keys = (0..<20_000).map { "key-\($0)" }
        let all = RendezvousHashing([.init(name: "a"), .init(name: "b"), .init(name: "c")])
        let withoutB = RendezvousHashing([.init(name: "a"), .init(name: "c")])
        for key in keys {
            let before = all.members[all.owner(of: key)].name
            let after = withoutB.members[withoutB.owner(of: key)].name
            if before != "b" { #expect(before == after) }
        }
    }

    @Test func weightsSetTheShares() {
        let keys = (0..<30_000).map { "key-\($0)" }
        let hashing = RendezvousHashing([.init(name: "small", weight: 1), .init(name: "big", weight: 3)])
        let big = keys.filter { hashing.owner(of: $0) == 1 }.count
        #expect(abs(Double(big) / Double(keys.count) - 0.75) < 0.02)
        // Adding a weighted member moves only about weight/total of the keys, all to it.
        let grown = RendezvousHashing([.init(name: "small", weight: 1), .init(name: "big", weight: 3), .init(name: "new", weight: 2)])
        var moved = 0
        for key in keys where hashing.owner(of: key) != grown.owner(of: key) {
            moved += 1
            #expect(grown.owner(of: key) == 2)
        }
        #expect(abs(Double(moved) / Double(keys.count) - 2.0 / 6.0) < 0.02)
    }
}
