/// The QUEUED jobs of `InMemoryScheduler` in assignment order: priority (lower first), then queue
/// order. Sorted on insertion, so that a bot takes the first jobs it matches without sorting the whole
/// queue each time (quadratic with thousands of jobs queued).
struct JobQueue {
    struct Entry: Equatable {
        let priority: Int32
        /// The job's place in queue order, kept when it is requeued.
        let sequence: UInt64
        let jobID: String

        func precedes(_ other: Entry) -> Bool { (priority, sequence) < (other.priority, other.sequence) }
    }

    private(set) var entries: [Entry] = []

    var count: Int { entries.count }

    mutating func insert(_ entry: Entry) {
        entries.insert(entry, at: firstIndex(notBefore: entry))
    }

    /// Removes the entry if present (a job's entry has its current priority).
    mutating func remove(_ entry: Entry) {
        let index = firstIndex(notBefore: entry)
        if index < entries.count && entries[index] == entry { entries.remove(at: index) }
    }

    /// The first position whose entry does not precede `entry` (binary search).
    private func firstIndex(notBefore entry: Entry) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].precedes(entry) { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
