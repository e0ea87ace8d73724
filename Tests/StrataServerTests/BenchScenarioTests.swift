import StrataBench
import StrataServer
import Testing

/// `strata bench` is what docs/performance.md and tools/compare-buildgrid rest on: every scenario must
/// run against a real server and pass its own checks (answers complete, blobs read back whole). No
/// timing is asserted.
@Suite struct BenchScenarioTests {
    @Test(arguments: Scenario.allCases)
    func scenarioRunsAgainstStrata(_ scenario: Scenario) async throws {
        let blobSize = scenario == .byteStreamWrite || scenario == .byteStreamRead ? (3 << 20) + 5 : 1000
        let result = try await withServer([memoryInstance(capacity: 256 << 20)]) { clients in
            var options = BenchmarkOptions()
            options.port = clients.port
            options.scenario = scenario
            options.concurrency = 2
            options.batch = 20
            // Over 1 MiB for ByteStream, so a blob spans several messages and several stored pieces.
            options.blobSize = blobSize
            options.duration = 60
            options.maxOperations = 4
            return try await Benchmark.run(options)
        }
        #expect(result.operations == 4)
        if scenario == .byteStreamWrite || scenario == .byteStreamRead {
            #expect(result.payloadBytes == 4 * Int64(blobSize))
        }
    }
}
