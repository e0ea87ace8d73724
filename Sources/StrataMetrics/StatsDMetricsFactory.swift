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
/// Lines wait in a bounded buffer until a `StatsDWriter` drains it: nothing is sent before `strata
/// serve` runs the writer, and a writer that cannot keep up loses the newest lines (counted in
/// `droppedLines`), never memory.
public final class StatsDMetricsFactory: MetricsFactory, Sendable {
    public let format: StatsDFormat
    /// Lines kept for the writer at most; past it new timer and recorder values are dropped.
    public let bufferLimit: Int

    private struct State {
        var lines: [String] = []
        var dropped = 0
        var counters: [ObjectIdentifier: CounterSlot] = [:]
        var meters: [ObjectIdentifier: MeterSlot] = [:]
    }
    private let state = Mutex(State())

    public init(format: StatsDFormat, bufferLimit: Int = 100_000) {
        self.format = format
        self.bufferLimit = bufferLimit
    }

    /// Lines dropped because the buffer was full.
    public var droppedLines: Int { state.withLock { $0.dropped } }

    /// The lines written since the last call: counters that moved and every meter, then the buffered
    /// timer and recorder lines.
    public func drain() -> [String] {
        let (counters, meters, lines) = state.withLock { state in
            let lines = state.lines
            state.lines.removeAll(keepingCapacity: true)
            return (Array(state.counters.values), Array(state.meters.values), lines)
        }
        var result: [String] = []
        for slot in counters {
            let value = slot.handler.take()
            if value != 0 { result.append(slot.head + String(value) + "|c" + slot.tail) }
        }
        for slot in meters {
            if let value = slot.handler.value { result.append(slot.head + Self.number(value) + "|g" + slot.tail) }
        }
        return result + lines
    }

    fileprivate func append(_ line: String) {
        state.withLock { state in
            guard state.lines.count < bufferLimit else {
                state.dropped += 1
                return
            }
            state.lines.append(line)
        }
    }

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
        let (head, tail) = format.template(label: label, dimensions: dimensions)
        // A gauge (not aggregated) is a StatsD gauge; an aggregated recorder is a distribution, which
        // BuildGrid writes as a timer line.
        return StatsDRecorder(factory: self, head: head, tail: aggregate ? "|ms" + tail : "|g" + tail)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        let (head, tail) = format.template(label: label, dimensions: dimensions)
        return StatsDTimer(factory: self, head: head, tail: "|ms" + tail)
    }

    public func destroyCounter(_ handler: any CounterHandler) {
        state.withLock { _ = $0.counters.removeValue(forKey: ObjectIdentifier(handler)) }
    }

    public func destroyMeter(_ handler: any MeterHandler) {
        state.withLock { _ = $0.meters.removeValue(forKey: ObjectIdentifier(handler)) }
    }

    public func destroyRecorder(_ handler: any RecorderHandler) {}
    public func destroyTimer(_ handler: any TimerHandler) {}
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

final class StatsDRecorder: RecorderHandler, Sendable {
    let factory: StatsDMetricsFactory
    let head: String
    let tail: String
    init(factory: StatsDMetricsFactory, head: String, tail: String) {
        self.factory = factory
        self.head = head
        self.tail = tail
    }
    func record(_ value: Int64) { factory.append(head + String(value) + tail) }
    func record(_ value: Double) { factory.append(head + StatsDMetricsFactory.number(value) + tail) }
}

final class StatsDTimer: TimerHandler, Sendable {
    let factory: StatsDMetricsFactory
    let head: String
    let tail: String
    init(factory: StatsDMetricsFactory, head: String, tail: String) {
        self.factory = factory
        self.head = head
        self.tail = tail
    }
    /// In milliseconds, as StatsD's `ms` type says and BuildGrid writes them.
    func recordNanoseconds(_ duration: Int64) {
        factory.append(head + StatsDMetricsFactory.number(Double(duration) / 1_000_000) + tail)
    }
}
