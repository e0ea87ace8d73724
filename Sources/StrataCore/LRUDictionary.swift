/// A dictionary that keeps its entries' total cost under a capacity by evicting the least recently used.
///
/// Costs are bytes for a blob store and 1 for an entry-counted cache. Not thread-safe: owners guard it
/// with a lock. All operations are O(1): the recency list is threaded through the dictionary.
public struct LRUDictionary<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct Entry: Sendable {
        var value: Value
        var cost: Int64
        var newer: Key?
        var older: Key?
    }

    private var entries: [Key: Entry] = [:]
    private var newest: Key?
    private var oldest: Key?
    public private(set) var totalCost: Int64 = 0
    public let capacity: Int64

    public init(capacity: Int64) {
        precondition(capacity > 0, "an LRU needs a positive capacity")
        self.capacity = capacity
    }

    public var count: Int { entries.count }

    public func contains(_ key: Key) -> Bool { entries[key] != nil }

    /// Returns the value and marks it most recently used.
    public mutating func get(_ key: Key) -> Value? {
        guard let entry = entries[key] else { return nil }
        if newest != key {
            unlink(key, entry)
            link(key, entry.value, cost: entry.cost)
        }
        return entry.value
    }

    /// Inserts or replaces; evicts least recently used entries until the total fits. An entry costing
    /// more than the capacity is not inserted and `false` is returned.
    @discardableResult
    public mutating func insert(_ key: Key, _ value: Value, cost: Int64) -> Bool {
        guard cost <= capacity else { return false }
        if let existing = entries[key] { unlink(key, existing) }
        while totalCost + cost > capacity, let victim = oldest {
            unlink(victim, entries[victim]!)
        }
        link(key, value, cost: cost)
        return true
    }

    @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        guard let entry = entries[key] else { return nil }
        unlink(key, entry)
        return entry.value
    }

    /// Removes and returns the least recently used entry, for owners that evict by hand.
    public mutating func removeLeastRecent() -> (key: Key, value: Value, cost: Int64)? {
        guard let key = oldest, let entry = entries[key] else { return nil }
        unlink(key, entry)
        return (key, entry.value, entry.cost)
    }

    private mutating func unlink(_ key: Key, _ entry: Entry) {
        entries[key] = nil
        if let newer = entry.newer { entries[newer]!.older = entry.older } else { newest = entry.older }
        if let older = entry.older { entries[older]!.newer = entry.newer } else { oldest = entry.newer }
        totalCost -= entry.cost
    }

    private mutating func link(_ key: Key, _ value: Value, cost: Int64) {
        entries[key] = Entry(value: value, cost: cost, newer: nil, older: newest)
        if let newest { entries[newest]!.newer = key }
        newest = key
        if oldest == nil { oldest = key }
        totalCost += cost
    }
}
