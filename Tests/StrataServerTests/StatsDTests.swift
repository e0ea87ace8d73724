import CoreMetrics
import Foundation
#if canImport(Glibc)
import Glibc
#endif
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

    /// BuildGrid's `socket`: Strata listens on the path and every connected reader gets the lines;
    /// the socket file is gone when the writer stops.
    @Test func aSocketOutputServesItsReaders() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("strata-statsd-\(UUID().uuidString.prefix(8)).sock").path
        let factory = StatsDMetricsFactory(format: StatsDFormat())
        let writer = StatsDWriter(factory: factory, endpoint: .socket(path: path), interval: .milliseconds(50), logger: Logger(label: "test"))
        let run = Task { try await writer.run() }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: path) { try await Task.sleep(for: .milliseconds(25)) }
        let reader = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0)
        defer { close(reader) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(reader, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(connected == 0)
        _ = fcntl(reader, F_SETFL, O_NONBLOCK)
        Counter(label: "calls", dimensions: [("method", "Read")], factory: factory).increment(by: 2)
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<200 where !text.contains("calls,method=Read:2|c\n") {
            try await Task.sleep(for: .milliseconds(25))
            let count = buffer.withUnsafeMutableBytes { recv(reader, $0.baseAddress, $0.count, 0) }
            if count > 0 { text += String(decoding: buffer[..<count], as: UTF8.self) }
        }
        #expect(text == "calls,method=Read:2|c\n")
        run.cancel()
        try await run.value
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}
