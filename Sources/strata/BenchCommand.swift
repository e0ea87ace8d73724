import ArgumentParser
import Foundation
import StrataBench
import StrataCore

extension Scenario: ExpressibleByArgument {}

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load a running REAPI server (Strata or another) and report throughput and latency.",
        discussion: "Scenarios: \(Scenario.allCases.map(\.rawValue).joined(separator: ", ")).")

    @Option(help: "The server, host:port.") var target = "127.0.0.1:50051"
    @Option(help: "The instance name.") var instance = ""
    @Option(help: "The scenario to run.") var scenario: Scenario = .findMissingPresent
    @Option(help: "Concurrent workers (one connection, many streams).") var concurrency = 4
    @Option(help: "Seconds to run.") var duration: Double = 5
    @Option(help: "Digests or blobs per request.") var batch = 1000
    @Option(help: "Bytes per blob (size strings such as 64M are accepted).") var blobSize = "4096"
    @Option(help: "Stop after this many operations.") var maxOperations: Int?
    @Option(help: "The server's pid: report its CPU time and peak RSS from /proc.") var serverPid: Int32?
    @Flag(help: "Print JSON instead of a table line.") var json = false
    @Option(help: "A header sent with every call, NAME=VALUE (e.g. authorization=Bearer TOKEN); repeatable.")
    var header: [String] = []

    func run() async throws {
        var options = BenchmarkOptions()
        guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
            throw ValidationError("--target must be host:port")
        }
        options.host = String(target[..<colon])
        options.port = port
        options.instanceName = instance
        options.scenario = scenario
        options.concurrency = concurrency
        options.duration = duration
        options.batch = batch
        guard let size = parseByteSize(blobSize).map({ Int($0) }) else { throw ValidationError("--blob-size \(blobSize) is not a size") }
        options.blobSize = size
        options.maxOperations = maxOperations
        options.serverPID = serverPid
        for field in header {
            guard let equals = field.firstIndex(of: "="), equals != field.startIndex else {
                throw ValidationError("--header \(field) is not NAME=VALUE")
            }
            options.headers[field[..<equals].lowercased()] = String(field[field.index(after: equals)...])
        }
        let result = try await Benchmark.run(options)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(String(
                format: "%@: %d ops in %.1fs, %.0f ops/s, %.0f items/s, %.1f MB/s, p50 %.2f ms, p99 %.2f ms, server CPU %@ s, peak RSS %@ MiB",
                scenario.rawValue, result.operations, result.seconds, result.operationsPerSecond, result.itemsPerSecond,
                result.megabytesPerSecond, result.p50Milliseconds, result.p99Milliseconds,
                result.serverCPUSeconds.map { String(format: "%.2f", $0) } ?? "-",
                result.serverPeakRSSBytes.map { String($0 >> 20) } ?? "-"))
        }
    }
}
