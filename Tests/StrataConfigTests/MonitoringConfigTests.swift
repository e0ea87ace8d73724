import Foundation
import StrataConfig
import StrataMetrics
import StrataServer
import StrataStorage
import Testing

@Suite struct MonitoringConfigTests {
    static let head = """
        server: [!channel {address: "127.0.0.1:1", insecure-mode: true}]
        storages:
          - &cas !lru-storage {size: 1M}
        instances:
          - name: ""
            services:
              - !cas {storage: *cas}
        """

    func parse(_ monitoring: String) throws -> Configuration {
        try Configuration.parse(yaml: Self.head + "\n" + monitoring, file: "test.yml", environment: [:])
    }

    func expectError(_ monitoring: String, line: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "test.yml", line: line, [fragment], sourceLocation: sourceLocation) { try parse(monitoring) }
    }

    @Test func buildGridsSectionIsReadWithItsDefaults() throws {
        let configuration = try parse("""
            monitoring:
              enabled: true
              endpoint-type: udp
              endpoint-location: localhost:8125
              serialization-format: statsd
              metric-prefix: " buildgrid. "
              tag-format: dogstatsd
              additional-tags: {env: prod, team: build}
            """)
        let outputs = try #require(configuration.monitoring?.outputs)
        #expect(outputs == [.statsD(
            .udp(host: "localhost", port: 8125),
            StatsDFormat(prefix: "buildgrid.", tagFormat: .dogStatsD, additionalTags: ["env": "prod", "team": "build"]))])
        // BuildGrid's defaults: present means enabled, stdout, statsd, influx-statsd, no prefix.
        #expect(try parse("monitoring: {}").monitoring?.outputs == [.statsD(.stdout, StatsDFormat())])
    }

    @Test func severalOutputsAreAListAndPrometheusIsStratas() throws {
        let configuration = try parse("""
            monitoring:
              - endpoint-type: prometheus
                endpoint-location: 127.0.0.1:9090
              - endpoint-type: file
                endpoint-location: /tmp/strata-never-created/metrics.statsd
              - endpoint-type: socket
                endpoint-location: /tmp/strata-never-created/monitoring.sock
              - endpoint-type: udp
                endpoint-location: 127.0.0.1:8125
                enabled: false
            """)
        let setup = try #require(configuration.monitoring)
        #expect(setup.outputs == [
            .prometheus(ListenAddress(.tcp(host: "127.0.0.1", port: 9090))),
            .statsD(.file(path: "/tmp/strata-never-created/metrics.statsd"), StatsDFormat()),
            .statsD(.socket(path: "/tmp/strata-never-created/monitoring.sock"), StatsDFormat()),
        ])
        #expect(setup.monitoring.prometheus != nil)
        #expect(setup.monitoring.statsDWriters.count == 2)
        // Loading has no side effects: nothing is created until `strata serve` runs the outputs.
        #expect(!FileManager.default.fileExists(atPath: "/tmp/strata-never-created"))
        // Every storage records through a metrics decorator.
        #expect(configuration.instances[0].cas?.store is MetricsBlobStore)
    }

    @Test func disabledOrAbsentMonitoringBuildsNothing() throws {
        #expect(try parse("monitoring: {enabled: false}").monitoring == nil)
        let plain = try Configuration.parse(yaml: Self.head, file: "test.yml", environment: [:])
        #expect(plain.monitoring == nil)
        #expect(plain.instances[0].cas?.store is LRUBlobStore)
    }

    @Test func buildGridsBusFormatsTurnTheOutputOffWithAWarning() throws {
        let configuration = try parse("""
            monitoring:
              enabled: true
              endpoint-type: socket
              endpoint-location: monitoring_bus_socket
              serialization-format: binary
              metric-prefix: buildgrid
            """)
        #expect(configuration.monitoring == nil)
        #expect(configuration.warnings.contains { $0.contains("serialization-format: binary") && $0.contains("off") })
    }

    @Test func mistakesAreRefusedWithTheirLine() {
        expectError("monitoring: {endpoint-type: tcp}", line: 8, "unknown endpoint-type \"tcp\"")
        expectError("monitoring: {endpoint-type: udp}", line: 8, "needs an endpoint-location")
        expectError("monitoring: {endpoint-type: udp, endpoint-location: statsd}", line: 8, "is not host:port")
        expectError("monitoring: {endpoint-type: prometheus, endpoint-location: \"127.0.0.1:9090\", tag-format: none}", line: 8, "applies to StatsD outputs")
        expectError("monitoring: {tag-format: influx}", line: 8, "unknown tag-format \"influx\"")
        expectError("monitoring: {serialization-format: xml}", line: 8, "unknown serialization-format")
        expectError("monitoring: {interval: 5}", line: 8, "unknown option \"interval\"")
        expectError("""
            monitoring:
              - {endpoint-type: stdout}
              - {endpoint-type: stdout}
            """, line: 10, "given twice")
    }

    @Test func maintenanceCommandsSendTheirDeletionsToTheUDPOutputsOnly() throws {
        let configuration = try parse("""
            monitoring:
              - {endpoint-type: prometheus, endpoint-location: "127.0.0.1:9090"}
              - {endpoint-type: file, endpoint-location: /tmp/strata-never-created/metrics}
              - {endpoint-type: udp, endpoint-location: "127.0.0.1:8125"}
            """)
        let writers = configuration.maintenanceMonitoringServices().compactMap { $0 as? StatsDWriter }
        #expect(writers.map(\.endpoint) == [.udp(host: "127.0.0.1", port: 8125)])
        let counters = configuration.deletionCounters(job: "cleanup", instances: ["main", "main"])
        #expect(counters.count == 1)
        counters["main"]?.blobs.increment(by: 3)
        counters["main"]?.bytes.increment(by: 300)
        #expect(Set(writers[0].factory.drain()) == [
            "strata_cleanup_deleted_blobs_total,instance=main:3|c", "strata_cleanup_deleted_bytes_total,instance=main:300|c",
        ])
        #expect(try parse("").deletionCounters(job: "janitor", instances: ["main"]).isEmpty)
    }
}
