import CoreMetrics
import Foundation
import Logging
import StrataMetrics
import Testing

@Suite struct StatsDTests {
    func lines(_ format: StatsDFormat, _ record: (any MetricsFactory) -> Void) -> [String] {
        let factory = StatsDMetricsFactory(format: format)
        record(factory)
        return factory.drain()
    }

    /// BuildGrid's four tag formats, its prefix rule, sorted tags, empty values left out, and the
    /// additional tags (a metric's own tag of the same name wins).
    @Test func linesLookLikeBuildGrids() {
        let tags = [("method", "Read"), ("instance", ""), ("env", "ci")]
        func counter(_ factory: any MetricsFactory) { Counter(label: "rpc", dimensions: tags, factory: factory).increment(by: 3) }
        let extra = ["zone": "a", "env": "ignored"]
        let prefix = StatsDFormat.prefix(fromConfig: " buildgrid.. ")
        #expect(prefix == "buildgrid.")
        #expect(lines(StatsDFormat(prefix: prefix, tagFormat: .influxStatsD, additionalTags: extra), counter)
            == ["buildgrid.rpc,env=ci,method=Read,zone=a:3|c"])
        #expect(lines(StatsDFormat(prefix: prefix, tagFormat: .dogStatsD, additionalTags: extra), counter)
            == ["buildgrid.rpc:3|c|#env:ci,method:Read,zone:a"])
        #expect(lines(StatsDFormat(prefix: prefix, tagFormat: .graphite, additionalTags: extra), counter)
            == ["buildgrid.rpc;env=ci;method=Read;zone=a:3|c"])
        #expect(lines(StatsDFormat(prefix: prefix, tagFormat: .none, additionalTags: extra), counter) == ["buildgrid.rpc:3|c"])
    }

    @Test func countersAreSummedPerFlushAndTimersAreMilliseconds() {
        let factory = StatsDMetricsFactory(format: StatsDFormat())
        let counter = Counter(label: "calls", factory: factory)
        let timer = CoreMetrics.Timer(label: "latency", factory: factory)
        let gauge = Meter(label: "size", factory: factory)
        counter.increment()
        counter.increment(by: 4)
        timer.recordNanoseconds(2_500_000)
        gauge.set(42)
        #expect(Set(factory.drain()) == ["calls:5|c", "latency:2.5|ms", "size:42|g"])
        // A counter that did not move writes nothing; a gauge keeps its value.
        #expect(factory.drain() == ["size:42|g"])
    }

    @Test func aFullBufferDropsValuesNotMemory() {
        let factory = StatsDMetricsFactory(format: StatsDFormat(), bufferLimit: 10)
        let timer = CoreMetrics.Timer(label: "t", factory: factory)
        for _ in 0..<25 { timer.recordNanoseconds(1_000_000) }
        #expect(factory.drain().count == 10)
        #expect(factory.droppedLines == 15)
    }

    /// The writer opens its file when run (not before) and flushes what is left when it stops.
    @Test func aFileOutputIsWrittenWhileServing() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("strata-statsd-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let factory = StatsDMetricsFactory(format: StatsDFormat(prefix: "strata."))
        let writer = StatsDWriter(factory: factory, endpoint: .file(path: path), interval: .milliseconds(50), logger: Logger(label: "test"))
        #expect(!FileManager.default.fileExists(atPath: path))
        Counter(label: "calls", factory: factory).increment(by: 7)
        let run = Task { try await writer.run() }
        var text = ""
        for _ in 0..<200 where !text.contains("strata.calls:7|c") {
            try await Task.sleep(for: .milliseconds(25))
            text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        }
        run.cancel()
        try await run.value
        #expect(text == "strata.calls:7|c\n")
    }
}
