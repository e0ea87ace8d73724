import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif
import GRPCCore
import Logging
import StrataActionCache
import StrataAPI
import StrataConfig
import StrataCore
import StrataHTTP
import StrataMetrics
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct MonitoringTests {
    static func yaml(disk: String, statsDPort: Int) -> String {
        """
        server:
          - !channel { address: "127.0.0.1:0", insecure-mode: true }
        storages:
          - &cas !with-cache-storage
            cache: !lru-storage { size: 100K }
            fallback: !disk-storage { path: "\(disk)", max-size: 200K, evict: lru }
        caches:
          - &ac !lru-action-cache { max-cached-refs: 1000 }
        instances:
          - name: main
            services:
              - !cas { storage: *cas }
              - !bytestream { storage: *cas }
              - !action-cache { cache: *ac }
        monitoring:
          - endpoint-type: prometheus
            endpoint-location: 127.0.0.1:0
          - endpoint-type: udp
            endpoint-location: 127.0.0.1:\(statsDPort)
            metric-prefix: buildgrid
            additional-tags: { deployment: test }
        """
    }

    /// Runs traffic through an in-process server with monitoring on, scrapes `/metrics` over HTTP and
    /// finds every metric the README lists, with the values the traffic implies; reads `/status`,
    /// `/healthz` and `/readyz`; and receives the same counts as StatsD lines on a UDP socket.
    @Test func everyMetricTheReadmeListsIsServedAfterTraffic() async throws {
        let disk = FileManager.default.temporaryDirectory.appendingPathComponent("strata-monitoring-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let statsD = try UDPReceiver()
        defer { statsD.close() }
        let configuration = try Configuration.parse(yaml: Self.yaml(disk: disk, statsDPort: statsD.port), file: "test.yml", environment: [:])
        let setup = try #require(configuration.monitoring)
        try await configuration.prepare()

        let blobs = (0..<8).map { _ in Blob.random(size: 30_000) }
        let streamed = Blob.random(size: 50_000)
        let missingOutput = Blob.random(size: 10)
        try await withServer(configuration.instances, metrics: setup.rpcMetrics) { clients in
            let (listeners, services) = configuration.monitoringServices(
                server: clients.server, version: "test-version", logger: Logger(label: "test"))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for service in services { group.addTask { try await service.run() } }
                let port = try #require(await listeners[0].listeningPort())
                try await traffic(clients, blobs: blobs, streamed: streamed, missingOutput: missingOutput)

                let metrics = try await httpGet(port: port, "/metrics")
                #expect(metrics.status == 200)
                let scraped = PrometheusText(metrics.body)
                for name in try Self.readmeMetricNames() {
                    #expect(scraped.has(name), "\(name) is listed in the README but not served")
                }
                let fmb = ["method": "FindMissingBlobs", "instance": "main", "code": "OK"]
                #expect(scraped.sum("strata_rpc_requests_total", fmb) == 5)
                #expect(scraped.sum("strata_rpc_duration_seconds_count", fmb) == 5)
                #expect(scraped.sum("strata_rpc_requests_total", ["method": "GetActionResult", "code": "NOT_FOUND"]) == 2)
                #expect(scraped.sum("strata_rpc_received_bytes_total", ["method": "BatchUpdateBlobs"]) == 240_000)
                #expect(scraped.sum("strata_rpc_sent_bytes_total", ["method": "BatchReadBlobs"]) == 60_000)
                #expect(scraped.sum("strata_rpc_received_bytes_total", ["method": "Write"]) == 50_000)
                #expect(scraped.sum("strata_rpc_sent_bytes_total", ["method": "Read"]) == 50_000)
                #expect(scraped.sum("strata_rpc_received_bytes_total", ["method": "UpdateActionResult"]) > 0)
                #expect(scraped.sum("strata_action_cache_hits_total", ["instance": "main"]) == 1)
                #expect(scraped.sum("strata_action_cache_misses_total", ["instance": "main"]) == 2)
                #expect(scraped.sum("strata_action_cache_incomplete_total", [:]) == 1)
                // Every FindMissingBlobs asks the fallback (presence comes from there).
                #expect(scraped.sum("strata_backend_operations_total", ["backend": "disk-storage", "operation": "find_missing"]) >= 5)
                #expect(scraped.sum("strata_backend_operations_total", ["backend": "lru-action-cache", "operation": "get"]) == 3)
                #expect(scraped.sum("strata_backend_errors_total", [:]) == 0)
                #expect(scraped.sum("strata_with_cache_reads_total", [:]) >= 3)
                #expect(scraped.sum("strata_with_cache_fast_misses_total", [:]) >= 1)
                #expect(scraped.sum("strata_storage_limit_bytes", ["backend": "lru-storage"]) == 100 * 1024)
                #expect(scraped.sum("strata_storage_limit_bytes", ["backend": "disk-storage"]) == 200 * 1024)
                // 240 kB through a 100 KiB memory tier and a 200 KiB disk: both evicted.
                #expect(scraped.sum("strata_storage_evictions_total", ["backend": "lru-storage"]) >= 5)
                #expect(scraped.sum("strata_storage_evictions_total", ["backend": "disk-storage"]) >= 1)
                #expect(scraped.sum("strata_storage_bytes", ["backend": "lru-storage"]) <= 100 * 1024)
                #expect(scraped.sum("strata_storage_blobs", ["backend": "disk-storage"]) >= 1)
                #expect(scraped.sum("strata_uploads_in_flight", [:]) == 0)

                let status = try await httpGet(port: port, "/status")
                #expect(status.status == 200)
                let document = try #require(try JSONSerialization.jsonObject(with: Data(status.body.utf8)) as? [String: Any])
                #expect(document["version"] as? String == "test-version")
                #expect((document["uptime_seconds"] as? Double ?? -1) >= 0)
                let instance = try #require((document["instances"] as? [[String: Any]])?.first)
                #expect(instance["name"] as? String == "main")
                let actionCache = try #require(instance["action_cache"] as? [String: Any])
                #expect(actionCache["hits"] as? Int == 1)
                #expect(actionCache["misses"] as? Int == 2)
                #expect(abs((actionCache["hit_ratio"] as? Double ?? 0) - 1.0 / 3) < 1e-9)
                let storages = try #require(instance["storages"] as? [[String: Any]])
                #expect(Set(storages.compactMap { $0["backend"] as? String }) == ["lru-storage", "disk-storage"])
                #expect(storages.contains { $0["limit_bytes"] as? Int == 100 * 1024 && ($0["blobs"] as? Int ?? 0) > 0 })
                let tier = try #require((instance["fast_tiers"] as? [[String: Any]])?.first)
                #expect((tier["reads"] as? Int ?? 0) >= 3)
                #expect(tier["hit_ratio"] is Double)

                let health = try await httpGet(port: port, "/healthz")
                #expect(health.status == 200)
                #expect(try await httpGet(port: port, "/readyz").status == 200)
                #expect(try await httpGet(port: port, "/nothing-here").status == 404)

                // StatsD: the writer flushes every second; the counts add up across flushes.
                let line = "buildgrid.strata_rpc_requests_total,code=OK,deployment=test,instance=main,method=FindMissingBlobs:"
                var counted = 0
                for _ in 0..<100 where counted < 5 {
                    for received in try await statsD.receive(waiting: .milliseconds(100)) where received.hasPrefix(line) {
                        counted += Int(received.dropFirst(line.count).prefix { $0 != "|" }) ?? 0
                    }
                }
                #expect(counted == 5)
                group.cancelAll()
            }
        }
    }

    /// 5 FindMissingBlobs; 8 blobs of 30 kB, a batch each (evicting from both tiers), and 2 read back;
    /// one 50 kB ByteStream upload read back; an action-cache hit, a miss, and an entry dropped as
    /// incomplete (a second miss).
    func traffic(_ clients: Clients, blobs: [Blob], streamed: Blob, missingOutput: Blob) async throws {
        for _ in 0..<5 {
            _ = try await clients.cas.findMissingBlobs(.with {
                $0.instanceName = "main"
                $0.blobDigests = blobs.map(\.digest.proto)
            })
        }
        // One at a time, so the tiers evict in a known order.
        for blob in blobs {
            let updated = try await clients.cas.batchUpdateBlobs(.with {
                $0.instanceName = "main"
                $0.requests = [.with { $0.digest = blob.digest.proto; $0.data = blob.data }]
            })
            #expect(updated.responses.allSatisfy { $0.status.code == 0 })
        }
        // The newest blob is in the memory tier; an older one only on disk (a fast-tier miss).
        let read = try await clients.cas.batchReadBlobs(.with {
            $0.instanceName = "main"
            $0.digests = [blobs[7].digest.proto, blobs[4].digest.proto]
        })
        #expect(read.responses.map(\.data) == [blobs[7].data, blobs[4].data])
        let resource = "main/uploads/\(UUID().uuidString)/blobs/\(streamed.digest.hash)/\(streamed.digest.sizeBytes)"
        #expect(try await clients.byteStream.upload(resource, streamed.data) == streamed.digest.sizeBytes)
        #expect(try await clients.byteStream.download("main/blobs/\(streamed.digest.hash)/\(streamed.digest.sizeBytes)") == streamed.data)

        let complete = Blob.random(size: 64).digest
        let result = ActionResult.with { $0.outputFiles = [.with { $0.path = "out"; $0.digest = streamed.digest.proto }] }
        _ = try await clients.actionCache.updateActionResult(.with {
            $0.instanceName = "main"; $0.actionDigest = complete.proto; $0.actionResult = result
        })
        _ = try await clients.actionCache.getActionResult(.with { $0.instanceName = "main"; $0.actionDigest = complete.proto })
        let unknown = await rpcFailure {
            _ = try await clients.actionCache.getActionResult(.with { $0.instanceName = "main"; $0.actionDigest = Blob.random(size: 65).digest.proto })
        }
        #expect(unknown?.code == .notFound)
        let incomplete = Blob.random(size: 66).digest
        _ = try await clients.actionCache.updateActionResult(.with {
            $0.instanceName = "main"; $0.actionDigest = incomplete.proto
            $0.actionResult = .with { $0.outputFiles = [.with { $0.path = "gone"; $0.digest = missingOutput.digest.proto }] }
        })
        let dropped = await rpcFailure {
            _ = try await clients.actionCache.getActionResult(.with { $0.instanceName = "main"; $0.actionDigest = incomplete.proto })
        }
        #expect(dropped?.code == .notFound)
    }

    /// The metric names of the README's metrics table.
    static func readmeMetricNames() throws -> [String] {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        // Remote execution's metrics need a scheduler: StrataExecutionTests checks those rows.
        let names = text.split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("| `strata_"), !line.hasPrefix("| `strata_execution_") else { return nil }
            return String(line.dropFirst(3).prefix { $0 != "`" })
        }
        #expect(names.count >= 17, "the README's metrics table was not found")
        return names
    }

    @Test func readyzNamesTheBackendsThatDoNotAnswer() async throws {
        let failing = HTTPListener(
            host: "127.0.0.1", port: 0,
            routes: MonitoringRoutes.routes(
                metrics: { "" }, status: { "{}" },
                readiness: { ["redis storages[0]": "connection refused", "disk storages[1]": nil] }),
            purpose: "test", logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await failing.run() }
            let port = try #require(await failing.listeningPort())
            let ready = try await httpGet(port: port, "/readyz")
            #expect(ready.status == 503)
            #expect(ready.body.contains("redis storages[0]: connection refused"))
            #expect(!ready.body.contains("disk storages[1]"))
            #expect(try await httpGet(port: port, "/healthz").status == 200)
            group.cancelAll()
        }
    }

    @Test func aServerWithoutMonitoringRecordsNothingAndRunsNoMonitoringServices() async throws {
        let configuration = try Configuration.parse(yaml: ActionCacheCompletenessTests.yaml, file: "test.yml", environment: [:])
        #expect(configuration.monitoring == nil)
        #expect(!(configuration.instances[0].cas?.store is MetricsBlobStore))
        let server = try StrataServer(registry: configuration.registry, addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))])
        let (listeners, services) = configuration.monitoringServices(server: server, version: "v", logger: Logger(label: "test"))
        #expect(listeners.isEmpty && services.isEmpty)
    }
}

/// Prometheus's text format, parsed into samples.
struct PrometheusText {
    struct Sample {
        let name: String
        let labels: [String: String]
        let value: Double
    }
    let samples: [Sample]

    init(_ text: String) {
        samples = text.split(separator: "\n").compactMap { line in
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...])
            else { return nil }
            let series = line[..<space]
            guard let open = series.firstIndex(of: "{") else { return Sample(name: String(series), labels: [:], value: value) }
            var labels: [String: String] = [:]
            for pair in series[series.index(after: open)..<series.index(before: series.endIndex)].split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { continue }
                labels[String(parts[0])] = String(parts[1].dropFirst().dropLast())
            }
            return Sample(name: String(series[..<open]), labels: labels, value: value)
        }
    }

    /// Whether a series of the metric `name` is served (a histogram's as `name_bucket`, `_count`, `_sum`).
    func has(_ name: String) -> Bool {
        samples.contains { $0.name == name || $0.name == name + "_count" }
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    func sum(_ name: String, _ labels: [String: String]) -> Double {
        samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }
            .reduce(0) { $0 + $1.value }
    }
}

func httpGet(port: Int, _ path: String) async throws -> (status: Int, body: String) {
    let url = try #require(URL(string: "http://127.0.0.1:\(port)\(path)"))
    let (data, response) = try await URLSession.shared.data(from: url)
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// A UDP socket on 127.0.0.1 that a test reads datagrams from, without blocking a thread.
final class UDPReceiver: @unchecked Sendable {
    let descriptor: CInt
    let port: Int

    init() throws {
        (descriptor, port) = try bindLoopback(type: CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue))
    }

    /// The lines of the datagrams waiting, after `waiting` if there are none yet.
    func receive(waiting: Duration) async throws -> [String] {
        var lines = drain()
        if lines.isEmpty {
            try await Task.sleep(for: waiting)
            lines = drain()
        }
        return lines
    }

    private func drain() -> [String] {
        var lines: [String] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return lines }
            lines += String(decoding: buffer[..<count], as: UTF8.self).split(separator: "\n").map(String.init)
        }
    }

    func close() { Glibc.close(descriptor) }
}
