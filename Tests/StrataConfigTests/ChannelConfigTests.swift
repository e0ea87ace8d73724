import StrataConfig
import Foundation
import StrataServer
import StrataTestSupport
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

    /// `insecure-mode: false` with `credentials` is TLS (mutual with `tls-client-certs`); loading
    /// reads none of the files, which `checkTLSFiles` (config check) reads and reports, located.
    @Test func credentialsMakeATLSChannel() throws {
        let configuration = try parse("""
              - !channel
                address: "127.0.0.1:50052"
                insecure-mode: false
                max-concurrent-streams: 500
                credentials:
                  tls-server-key: /nonexistent/server.key
                  tls-server-cert: /nonexistent/server.pem
                  tls-client-certs: /nonexistent/clients.pem
            """)
        let first = ListenAddress(.tcp(host: "127.0.0.1", port: 50051))
        let second = ListenAddress(.tcp(host: "127.0.0.1", port: 50052))
        #expect(configuration.tls[first] == nil)
        #expect(configuration.tls[second] == TLSCredentials(
            serverKeyPath: "/nonexistent/server.key", serverCertificatePath: "/nonexistent/server.pem",
            clientCertificateAuthoritiesPath: "/nonexistent/clients.pem"))
        #expect(configuration.connectionPolicies[second]?.maxConcurrentStreams == 500)
        #expect(configuration.connectionPolicies[first]?.maxConcurrentStreams == 100)
        let problems = configuration.checkTLSFiles()
        #expect(problems.count == 1)
        #expect(problems.first?.line == 10)  // where the credentials mapping starts
        #expect(problems.first?.description.contains("tls-server-cert \"/nonexistent/server.pem\" does not exist") == true, "\(problems)")
    }

    /// Files that load pass `checkTLSFiles`; a CA file that holds no certificate does not.
    @Test func checkTLSFilesReadsTheCertificates() throws {
        let certificates = try TestCertificates()
        try certificates.makeAuthority("ca")
        try certificates.makeServer("server", signedBy: "ca")
        func check(clientCertificates: String) throws -> [ConfigError] {
            try parse("""
                  - !channel
                    address: "127.0.0.1:50052"
                    insecure-mode: false
                    credentials:
                      tls-server-key: \(certificates.path("server.key"))
                      tls-server-cert: \(certificates.path("server.pem"))
                      tls-client-certs: \(clientCertificates)
                """).checkTLSFiles()
        }
        #expect(try check(clientCertificates: certificates.path("ca.pem")).isEmpty)
        let problems = try check(clientCertificates: certificates.path("server.key"))
        #expect(problems.first?.description.contains("tls-client-certs") == true, "\(problems)")
    }

    /// `insecure-mode: true` is plaintext even with credentials (ignored with a warning, as BuildGrid's
    /// reference configuration has them); without `insecure-mode`, credentials mean TLS.
    @Test func insecureModeDecides() throws {
        let ignored = try parse("""
              - !channel
                address: "127.0.0.1:50052"
                insecure-mode: true
                credentials: { tls-server-key: a.key, tls-server-cert: a.pem }
            """)
        #expect(ignored.tls.isEmpty)
        #expect(ignored.warnings.contains { $0.contains("test.yml:8") && $0.contains("insecure-mode: true serves plaintext") }, "\(ignored.warnings)")
        let implied = try parse("""
              - !channel
                address: "127.0.0.1:50052"
                credentials: { tls-server-key: a.key, tls-server-cert: a.pem }
            """)
        #expect(implied.tls[ListenAddress(.tcp(host: "127.0.0.1", port: 50052))]?.serverCertificatePath == "a.pem")
    }

    @Test func incompleteTLSIsRefused() {
        expectConfigError(file: "test.yml", line: 7, ["insecure-mode: false needs credentials"], sourceLocation: #_sourceLocation) {
            try parse("""
                  - !channel
                    address: "127.0.0.1:50052"
                    insecure-mode: false
                """)
        }
        expectConfigError(file: "test.yml", line: 8, ["tls-server-key and tls-server-cert"], sourceLocation: #_sourceLocation) {
            try parse("""
                  - !channel
                    address: "127.0.0.1:50052"
                    insecure-mode: false
                    credentials: { tls-server-key: a.key }
                """)
        }
        expectConfigError(file: "test.yml", line: 8, ["tls-server-certs", "did you mean"], sourceLocation: #_sourceLocation) {
            try parse("""
                  - !channel
                    address: "127.0.0.1:50052"
                    insecure-mode: false
                    credentials: { tls-server-key: a.key, tls-server-certs: a.pem }
                """)
        }
        expectConfigError(file: "test.yml", line: 7, ["max-concurrent-streams", "at least 1"], sourceLocation: #_sourceLocation) {
            try parse("""
                  - !channel
                    address: "127.0.0.1:50052"
                    max-concurrent-streams: 0
                """)
        }
    }

    /// BuildGrid's `maximum-concurrent-rpcs` and `limiter: {concurrent-request-limit}` (0: none).
    @Test func concurrencyLimits() throws {
        func limits(_ top: String) throws -> [ConcurrencyLimit] {
            try Configuration.parse(yaml: """
                \(top)
                server:
                  - !channel
                    address: "127.0.0.1:50051"
                    insecure-mode: true
                storages:
                  - !lru-storage &cas
                    size: 1M
                instances:
                  - name: ""
                    services:
                      - !cas
                        storage: *cas
                """, file: "test.yml", environment: [:]).concurrencyLimits
        }
        #expect(try limits("thread-pool-size: 8") == [])
        #expect(try limits("maximum-concurrent-rpcs: 60") == [ConcurrencyLimit(name: "maximum-concurrent-rpcs", maxInFlight: 60)])
        #expect(try limits("limiter: { concurrent-request-limit: 0 }") == [])
        #expect(try limits("maximum-concurrent-rpcs: 60\nlimiter: { concurrent-request-limit: 8 }") == [
            ConcurrencyLimit(name: "maximum-concurrent-rpcs", maxInFlight: 60),
            ConcurrencyLimit(name: "limiter.concurrent-request-limit", maxInFlight: 8),
        ])
        expectConfigError(file: "test.yml", line: 1, ["maximum-concurrent-rpcs", "at least 1"], sourceLocation: #_sourceLocation) {
            try Configuration.parse(yaml: """
                maximum-concurrent-rpcs: 0
                server: [!channel {address: "127.0.0.1:50051"}]
                instances: [{name: "", services: []}]
                """, file: "test.yml", environment: [:])
        }
    }
}
