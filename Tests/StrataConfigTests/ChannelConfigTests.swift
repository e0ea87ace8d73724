import StrataConfig
import StrataServer
import Testing

@Suite struct ChannelConfigTests {
    func parse(_ channel: String) throws -> Configuration {
        try Configuration.parse(yaml: """
            server:
              - !channel
                address: "127.0.0.1:50051"
                insecure-mode: true
            \(channel)
            storages:
              - !lru-storage &cas
                size: 1M
            instances:
              - name: ""
                services:
                  - !cas
                    storage: *cas
            """, file: "test.yml", environment: [:])
    }

    /// Each `!channel` carries its own connection options; unset ones keep their defaults.
    @Test func connectionOptionsApplyToTheirChannel() throws {
        let configuration = try parse("""
              - !channel
                address: "127.0.0.1:50052"
                insecure-mode: true
                idle-timeout: 60
                preface-timeout: 2.5
                max-connections: 500
            """)
        let first = ListenAddress(.tcp(host: "127.0.0.1", port: 50051))
        let second = ListenAddress(.tcp(host: "127.0.0.1", port: 50052))
        #expect(configuration.connectionPolicies[first] == .default)
        #expect(configuration.connectionPolicies[second] == ConnectionPolicy(
            idleTimeout: .seconds(60), prefaceTimeout: .milliseconds(2500), maxConnections: 500))
        #expect(ConnectionPolicy.default.idleTimeout == .seconds(300))
        #expect(ConnectionPolicy.default.prefaceTimeout == .seconds(10))
    }

    @Test func badConnectionOptionsAreRefused() {
        expectConfigError(file: "test.yml", line: 7, ["max-connections", "at least 1"], sourceLocation: #_sourceLocation) {
            try parse("""
                  - !channel
                    address: "127.0.0.1:50052"
                    max-connections: 0
                """)
        }
        expectConfigError(file: "test.yml", line: 7, ["idle-timeout", "seconds"], sourceLocation: #_sourceLocation) {
            try parse("""
                  - !channel
                    address: "127.0.0.1:50052"
                    idle-timeout: soon
                """)
        }
    }
}
