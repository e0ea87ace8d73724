import Foundation

/// Where the real services of the integration tests listen, as `tools/services start` reports them
/// through the environment. `tools/test` sets `STRATA_REQUIRE_SERVICES=1`: there a missing service
/// fails the test run instead of skipping, so CI can never pass by skipping integration tests.
public enum TestServices {
    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// `host:port` of a Redis server.
    public static var redis: String? { value("STRATA_TEST_REDIS") }
    /// A `postgres://user@host:port/database` URL of a PostgreSQL 15 server.
    public static var postgres: String? { value("STRATA_TEST_POSTGRES") }
    /// The S3 endpoint URL and a key pair the server checks signatures against.
    public static var s3: (endpoint: String, accessKey: String, secretKey: String)? {
        guard let endpoint = value("STRATA_TEST_S3"), let access = value("STRATA_TEST_S3_ACCESS_KEY"),
              let secret = value("STRATA_TEST_S3_SECRET_KEY") else { return nil }
        return (endpoint, access, secret)
    }

    /// Whether the services are required (tools/test) rather than optional (a bare `swift test`).
    public static var required: Bool { environment["STRATA_REQUIRE_SERVICES"] == "1" }

    /// For `.enabled(if:)`: true when the service is there, or when it is required (so its absence
    /// shows as a failure rather than as a skip).
    public static func available(_ variable: String) -> Bool { value(variable) != nil || required }

    private static func value(_ name: String) -> String? {
        guard let value = environment[name], !value.isEmpty else { return nil }
        return value
    }

    /// A name unique to this run, for buckets, key prefixes and tables.
    public static func uniqueName(_ prefix: String) -> String {
        "\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
    }
}

public struct MissingServiceError: Error, CustomStringConvertible {
    public let variable: String
    public init(_ variable: String) { self.variable = variable }
    public var description: String {
        "\(variable) is not set: run the tests through tools/test, or start the services with `tools/services start DIR` and source DIR/env"
    }
}
