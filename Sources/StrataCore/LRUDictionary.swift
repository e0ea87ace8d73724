/// A dictionary that keeps its entries' total cost under a capacity by evicting the least recently used.
///
/// Costs are bytes for a blob store and 1 for an entry-counted cache. Not thread-safe: owners guard it
/// with a lock. All operations are O(1).
///
/// The entries live in an array of slots threaded by index into a recency list, and the dictionary maps
/// a key to its slot: a hit is one dictionary lookup and a few array writes, where threading the list
/// through the dictionary itself cost a removal and a re-insertion per hit. Everything is `@inlinable`
/// so the stores that use it get a version specialised for their key and value types; unspecialised,
/// every operation went through generic metadata look-ups.
public struct LRUDictionary<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    @usableFromInline
    struct Slot: Sendable {
        @usableFromInline var key: Key
        /// nil once the slot is free, so a removed value is released at once.
        @usableFromInline var value: Value?
        @usableFromInline var cost: Int64
        @usableFromInline var newer: Int
        @usableFromInline var older: Int

        @inlinable
        init(key: Key, value: Value, cost: Int64, newer: Int, older: Int) {
            self.key = key
            self.value = value
            self.cost = cost
            self.newer = newer
            self.older = older
        }
    }

    /// No slot: the end of the recency list.
    @usableFromInline static var none: Int { -1 }

    @usableFromInline var slotOfKey: [Key: Int] = [:]
    @usableFromInline var slots: [Slot] = []
    /// Slots of removed entries, reused before the array grows.
    @usableFromInline var freeSlots: [Int] = []
    @usableFromInline var newest = LRUDictionary.none
    @usableFromInline var oldest = LRUDictionary.none
    @usableFromInline var storedCost: Int64 = 0
    @usableFromInline var evictedCount: Int64 = 0
    public let capacity: Int64

    public init(capacity: Int64) {
        precondition(capacity > 0, "an LRU needs a positive capacity")
        self.capacity = capacity
    }

    @inlinable public var count: Int { slotOfKey.count }

    @inlinable public var totalCost: Int64 { storedCost }

    /// Entries `insert` evicted to make room (not those removed or replaced), for the eviction metrics.
    @inlinable public var evictions: Int64 { evictedCount }

    @inlinable public func contains(_ key: Key) -> Bool { slotOfKey[key] != nil }

    /// Returns the value and marks it most recently used.
    @inlinable
    public mutating func get(_ key: Key) -> Value? {
        guard let slot = slotOfKey[key] else { return nil }
        if newest != slot {
            unlink(slot)
            pushNewest(slot)
        }
        return slots[slot].value
    }

    /// Marks the entry most recently used; whether there is one. `get` without copying the value out.
    @inlinable
    public mutating func touch(_ key: Key) -> Bool {
        guard let slot = slotOfKey[key] else { return false }
        if newest != slot {
            unlink(slot)
            pushNewest(slot)
        }
        return true
    }

    /// Inserts or replaces; evicts least recently used entries until the total fits. An entry costing
    /// more than the capacity is not inserted and `false` is returned.
    @inlinable
    @discardableResult
    public mutating func insert(_ key: Key, _ value: Value, cost: Int64) -> Bool {
        guard cost <= capacity else { return false }
        if let existing = slotOfKey.removeValue(forKey: key) { release(existing) }
        while storedCost + cost > capacity, oldest != Self.none {
            slotOfKey[slots[oldest].key] = nil
            release(oldest)
            evictedCount += 1
        }
        let slot: Int
        if let reused = freeSlots.popLast() {
            slot = reused
            slots[slot] = Slot(key: key, value: value, cost: cost, newer: Self.none, older: Self.none)
        } else {
            slot = slots.count
            slots.append(Slot(key: key, value: value, cost: cost, newer: Self.none, older: Self.none))
        }
        slotOfKey[key] = slot
        storedCost += cost
        pushNewest(slot)
        return true
    }

    @inlinable
    @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        guard let slot = slotOfKey.removeValue(forKey: key) else { return nil }
        return release(slot)
    }

    /// Removes and returns the least recently used entry, for owners that evict by hand.
    @inlinable
    public mutating func removeLeastRecent() -> (key: Key, value: Value, cost: Int64)? {
        guard oldest != Self.none else { return nil }
        let slot = oldest
        let key = slots[slot].key
        let cost = slots[slot].cost
        slotOfKey[key] = nil
        guard let value = release(slot) else { return nil }
        return (key, value, cost)
    }

    /// Takes a slot out of the list and frees it; the caller has removed its key from `slotOfKey`.
    @inlinable
    @discardableResult
    mutating func release(_ slot: Int) -> Value? {
        unlink(slot)
        storedCost -= slots[slot].cost
        let value = slots[slot].value
        slots[slot].value = nil
        slots[slot].cost = 0
        freeSlots.append(slot)
        return value
    }

    @inlinable
    mutating func unlink(_ slot: Int) {
        let newer = slots[slot].newer
        let older = slots[slot].older
        if newer != Self.none { slots[newer].older = older } else { newest = older }
        if older != Self.none { slots[older].newer = newer } else { oldest = newer }
        slots[slot].newer = Self.none
        slots[slot].older = Self.none
    }

    @inlinable
    mutating func pushNewest(_ slot: Int) {
        slots[slot].older = newest
        slots[slot].newer = Self.none
        if newest != Self.none { slots[newest].newer = slot }
        newest = slot
        if oldest == Self.none { oldest = slot }
    }
}
