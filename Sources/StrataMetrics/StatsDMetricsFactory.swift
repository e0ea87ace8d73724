import CoreMetrics
import Synchronization

/// How a StatsD line carries its tags, as BuildGrid's `tag-format` names them.
public enum StatsDTagFormat: String, Sendable, CaseIterable {
    /// Plain StatsD, `name:value|type`: tags are dropped.
    case none
    /// InfluxDB's, `name,tag=value:value|type` (BuildGrid's default).
    case influxStatsD = "influx-statsd"
    /// Datadog's, `name:value|type|#tag:value`.
    case dogStatsD = "dogstatsd"
    /// Graphite's, `name;tag=value:value|type`.
    case graphite
}

/// What a StatsD line looks like: BuildGrid's `metric-prefix`, `tag-format` and `additional-tags`.
public struct StatsDFormat: Sendable, Hashable {
    /// Put before every name, as given (BuildGrid's "buildgrid" becomes "buildgrid.").
    public var prefix: String
    public var tagFormat: StatsDTagFormat
    /// Tags added to every line; a metric's own tag of the same name wins.
    public var additionalTags: [String: String]

    public init(prefix: String = "", tagFormat: StatsDTagFormat = .influxStatsD, additionalTags: [String: String] = [:]) {
        self.prefix = prefix
        self.tagFormat = tagFormat
        self.additionalTags = additionalTags
    }

    /// BuildGrid's `metric-prefix` rule: trimmed, one trailing dot.
    public static func prefix(fromConfig value: String) -> String {
        var trimmed = Substring(value.trimmingWhitespace())
        while trimmed.hasSuffix(".") { trimmed = trimmed.dropLast() }
        return trimmed + "."
    }

    /// The fixed part of a metric's lines: the prefixed name with its tags, sorted by name, empty values
    /// left out (as BuildGrid writes them), and where the value goes.
    func template(label: String, dimensions: [(String, String)]) -> (head: String, tail: String) {
        let name = prefix + label
        var tags = additionalTags
        for (key, value) in dimensions { tags[key] = value }
        let assign = tagFormat == .dogStatsD ? ":" : "="
        let pairs = tags.filter { !$0.value.isEmpty }.sorted { $0.key < $1.key }.map { "\($0.key)\(assign)\($0.value)" }
        guard !pairs.isEmpty else { return (name + ":", "") }
        switch tagFormat {
        case .none: return (name + ":", "")
        case .influxStatsD: return (name + "," + pairs.joined(separator: ",") + ":", "")
        case .dogStatsD: return (name + ":", "|#" + pairs.joined(separator: ","))
        case .graphite: return (name + ";" + pairs.joined(separator: ";") + ":", "")
        }
    }
}

extension String {
    func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

/// A swift-metrics `MetricsFactory` that writes StatsD lines (no maintained Swift StatsD backend
/// exists, so this is Strata's own): counters are summed and written once per flush (one line per
/// counter that moved, not one per request); timers and recorders write one line per value, as StatsD
/// servers expect to aggregate them; meters write their value at every flush.
///
/// Recording formats nothing: a request adds to an atomic or appends a number, and the lines are made
/// when a `StatsDWriter` drains the factory. Nothing is sent before `strata serve` runs the writer,
/// and values past `bufferLimit` per metric and flush are dropped (counted in `droppedLines`), so a
/// writer that cannot keep up costs no memory.
public final class StatsDMetricsFactory: MetricsFactory, Sendable {
    public let format: StatsDFormat
    /// Lines kept for the writer at most; past it new timer and recorder values are dropped.
    public let bufferLimit: Int

    private struct State {
        var counters: [ObjectIdentifier: CounterSlot] = [:]
        var meters: [ObjectIdentifier: MeterSlot] = [:]
        var values: [ObjectIdentifier: ValuesSlot] = [:]
    }
    private let dropped = Atomic<Int>(0)
    private let state = Mutex(State())

    public init(format: StatsDFormat, bufferLimit: Int = 20_000) {
        self.format = format
        self.bufferLimit = bufferLimit
    }

    /// Values dropped because their metric had `bufferLimit` waiting.
    public var droppedLines: Int { dropped.load(ordering: .relaxed) }

    /// The lines since the last call: counters that moved, every meter, and each timer and recorder
    /// value.
    public func drain() -> [String] {
        let (counters, meters, values) = state.withLock { state in
            (Array(state.counters.values), Array(state.meters.values), Array(state.values.values))
        }
        var result: [String] = []
        for slot in counters {
            let value = slot.handler.take()
            if value != 0 { result.append(slot.head + String(value) + "|c" + slot.tail) }
        }
        for slot in meters {
            if let value = slot.handler.value { result.append(slot.head + Self.number(value) + "|g" + slot.tail) }
        }
        for slot in values {
            for value in slot.handler.take() { result.append(slot.head + Self.number(value) + slot.tail) }
        }
        return result
    }

    fileprivate func noteDropped() { dropped.add(1, ordering: .relaxed) }

    static func number(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    private struct CounterSlot {
        let handler: StatsDCounter
        let head: String
        let tail: String
    }
    private struct MeterSlot {
        let handler: StatsDMeter
        let head: String
        let tail: String
    }
    private struct ValuesSlot {
        let handler: StatsDValues
        let head: String
        /// The type (`|ms`, `|g`) and the tags that follow the value.
        let tail: String
    }

    private func makeValues(label: String, dimensions: [(String, String)], type: String) -> StatsDValues {
        let handler = StatsDValues(factory: self)
        let (head, tail) = format.template(label: label, dimensions: dimensions)
        state.withLock { $0.values[ObjectIdentifier(handler)] = ValuesSlot(handler: handler, head: head, tail: type + tail) }
        return handler
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        let handler = StatsDCounter()
        let (head, tail) = format.template(label: label, dimensions: dimensions)
        state.withLock { $0.counters[ObjectIdentifier(handler)] = CounterSlot(handler: handler, head: head, tail: tail) }
        return handler
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        let handler = StatsDMeter()
        let (head, tail) = format.template(label: label, dimensions: dimensions)
        state.withLock { $0.meters[ObjectIdentifier(handler)] = MeterSlot(handler: handler, head: head, tail: tail) }
        return handler
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        // A gauge (not aggregated) is a StatsD gauge; an aggregated recorder is a distribution, which
        // BuildGrid writes as a timer line.
        makeValues(label: label, dimensions: dimensions, type: aggregate ? "|ms" : "|g")
    }

    /// In milliseconds, as StatsD's `ms` type says and BuildGrid writes them.
    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        makeValues(label: label, dimensions: dimensions, type: "|ms")
    }

    public func destroyCounter(_ handler: any CounterHandler) {
        state.withLock { _ = $0.counters.removeValue(forKey: ObjectIdentifier(handler)) }
    }

    public func destroyMeter(_ handler: any MeterHandler) {
        state.withLock { _ = $0.meters.removeValue(forKey: ObjectIdentifier(handler)) }
    }

    public func destroyRecorder(_ handler: any RecorderHandler) {
        state.withLock { _ = $0.values.removeValue(forKey: ObjectIdentifier(handler)) }
    }

    public func destroyTimer(_ handler: any TimerHandler) {
        state.withLock { _ = $0.values.removeValue(forKey: ObjectIdentifier(handler)) }
    }
}

final class StatsDCounter: CounterHandler, Sendable {
    private let pending = Atomic<Int64>(0)
    func increment(by amount: Int64) { pending.add(amount, ordering: .relaxed) }
    func reset() { pending.store(0, ordering: .relaxed) }
    func take() -> Int64 { pending.exchange(0, ordering: .relaxed) }
}

final class StatsDMeter: MeterHandler, Sendable {
    private let current = Mutex<Double?>(nil)
    var value: Double? { current.withLock { $0 } }
    func set(_ value: Int64) { current.withLock { $0 = Double(value) } }
    func set(_ value: Double) { current.withLock { $0 = value } }
    func increment(by amount: Double) { current.withLock { $0 = ($0 ?? 0) + amount } }
    func decrement(by amount: Double) { current.withLock { $0 = ($0 ?? 0) - amount } }
}

/// A timer's or recorder's values since the last flush (a timer's in milliseconds).
final class StatsDValues: RecorderHandler, TimerHandler, Sendable {
    let factory: StatsDMetricsFactory
    private let values = Mutex<[Double]>([])

    init(factory: StatsDMetricsFactory) {
        self.factory = factory
    }

    private func append(_ value: Double) {
        let kept = values.withLock { values in
            guard values.count < factory.bufferLimit else { return false }
            values.append(value)
            return true
        }
        if !kept { factory.noteDropped() }
    }

    func record(_ value: Int64) { append(Double(value)) }
    func record(_ value: Double) { append(value) }
    func recordNanoseconds(_ duration: Int64) { append(Double(duration) / 1_000_000) }

    func take() -> [Double] {
        values.withLock { values in
            defer { values.removeAll(keepingCapacity: true) }
            return values
        }
    }
}
