import Foundation
import StrataConfig
import StrataCore
import StrataS3
import StrataStorage
import Testing

@Suite struct S3ConfigTests {
    func parse(_ storage: String, environment: [String: String] = [:]) throws -> Configuration {
        try Configuration.parse(yaml: """
            server:
              - !channel
                address: "127.0.0.1:50051"
                insecure-mode: true
            storages:
              - \(storage)
            instances:
              - name: ""
                services:
                  - !cas
                    storage: *s3
            """, file: "s3.yml", environment: environment)
    }

    func store(_ storage: String, environment: [String: String] = [:]) throws -> S3BlobStore {
        try #require((try parse(storage, environment: environment).instances.first?.cas?.store as? VerifyingBlobStore<S3BlobStore>)?.backend)
    }

    /// The error the storage must fail with: its line (the storage starts on line 6) and a fragment.
    func expectError(_ storage: String, line: Int, _ fragments: String..., environment: [String: String] = [:],
                     sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "s3.yml", line: line, fragments, sourceLocation: sourceLocation) {
            try parse(storage, environment: environment)
        }
    }

    @Test func allOptions() throws {
        let store = try store("""
            !s3-storage &s3
                bucket: cas-{digest[0]}{digest[1]}
                endpoint: http://127.0.0.1:9000/
                access-key: AKID
                secret-key: !expand-vars $SECRET
                region: eu-west-3
                connect-timeout-seconds: 2.5
                read-timeout-seconds-per-kilobyte: 0.01
                write-timeout-seconds-per-kilobyte: 0.02
                read-timeout-min-seconds: 30
                write-timeout-min-seconds: 45.5
                stall-timeout-seconds: 3
                versioned-deletes: false
                hash-prefix-size: 2
                path-prefix-string: /strata/
            """, environment: ["SECRET": "s3cr3t", "AWS_ACCESS_KEY_ID": "ignored", "AWS_SECRET_ACCESS_KEY": "ignored"])
        let client = store.client.configuration
        #expect(client.endpoint == "http://127.0.0.1:9000/")
        #expect(client.region == "eu-west-3")
        #expect(client.credentials == S3Credentials(accessKey: "AKID", secretKey: "s3cr3t"))
        #expect(client.connectTimeoutSeconds == 2.5 && client.stallTimeoutSeconds == 3)
        #expect(store.options.readTimeout == S3TransferTimeout(minimumSeconds: 30, secondsPerKilobyte: 0.01))
        #expect(store.options.writeTimeout == S3TransferTimeout(minimumSeconds: 45.5, secondsPerKilobyte: 0.02))
        #expect(store.naming.hashPrefixSize == 2)
        #expect(store.naming.pathPrefix == "strata")
        let digest = try Digest(hash: String(repeating: "ab", count: 32), sizeBytes: 7)
        #expect(try store.naming.bucket(for: digest) == "cas-ab")
        #expect(store.naming.key(for: digest) == "strata/ab/\(String(repeating: "ab", count: 31))_7")
    }

    @Test func defaultsFromTheEnvironmentAndBuildGrid() throws {
        let store = try store("!s3-storage &s3 {bucket: cas}", environment: [
            "AWS_ACCESS_KEY_ID": "envkey", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_SESSION_TOKEN": "token",
            "AWS_REGION": "ap-south-1",
        ])
        let client = store.client.configuration
        #expect(client.credentials == S3Credentials(accessKey: "envkey", secretKey: "envsecret", sessionToken: "token"))
        #expect(client.region == "ap-south-1")
        #expect(client.endpoint == "https://s3.ap-south-1.amazonaws.com")
        #expect(client.connectTimeoutSeconds == 10 && client.stallTimeoutSeconds == 10)
        #expect(store.options.readTimeout == S3TransferTimeout(minimumSeconds: 120, secondsPerKilobyte: nil))
        #expect(store.options.writeTimeout == S3TransferTimeout(minimumSeconds: 120, secondsPerKilobyte: nil))
        #expect(store.options.singlePutLimit == 8 << 20 && store.options.partSize == 8 << 20)
        #expect(store.naming.hashPrefixSize == 0 && store.naming.pathPrefix == nil)

        let defaultRegion = try self.store("!s3-storage &s3 {bucket: cas, access-key: a, secret-key: b}",
                                           environment: ["AWS_DEFAULT_REGION": "eu-north-1", "AWS_REGION": "us-west-2"])
        #expect(defaultRegion.client.configuration.region == "eu-north-1")
        #expect(try self.store("!s3-storage &s3 {bucket: cas, access-key: a, secret-key: b}").client.configuration.region == "us-east-1")
    }

    @Test func timeoutsGrowWithSize() {
        let timeout = S3TransferTimeout(minimumSeconds: 120, secondsPerKilobyte: 0.01)
        #expect(timeout.seconds(forBytes: 1 << 20) == 120)
        #expect(timeout.seconds(forBytes: 100 << 20) == 1024)
        #expect(S3TransferTimeout(minimumSeconds: 30).seconds(forBytes: 1 << 30) == 30)
    }

    @Test func errorsNameFileLineAndKey() {
        expectError("!s3-storage &s3 {endpoint: \"http://x\"}", line: 6, "needs a bucket")
        expectError("!s3-storage &s3 {bucket: cas, secret-key: x}", line: 6, "storages[0].secret-key", "give both or neither")
        expectError("!s3-storage &s3 {bucket: cas}", line: 6, "AWS_ACCESS_KEY_ID")
        expectError("!s3-storage &s3 {bucket: cas, access-key: a, secret-key: b, versioned-deletes: true}", line: 6,
                    "storages[0].versioned-deletes", "not supported")
        expectError("!s3-storage &s3 {bucket: \"cas-{digest[-1]}\", access-key: a, secret-key: b}", line: 6,
                    "storages[0].bucket", "{digest[-1]}")
        expectError("!s3-storage &s3 {bucket: \"cas-{digest[64]}\", access-key: a, secret-key: b}", line: 6, "beyond")
        expectError("!s3-storage &s3 {bucket: cas, access-key: a, secret-key: b, endpoint: 127.0.0.1:9000}", line: 6,
                    "storages[0].endpoint", "http://")
        expectError("""
            !s3-storage &s3
                bucket: cas
                access-key: a
                secret-key: b
                read-timeout-min-seconds: 0
            """, line: 10, "storages[0].read-timeout-min-seconds", "more than 0")
        expectError("""
            !s3-storage &s3
                bucket: cas
                access-key: a
                secret-key: b
                write-timeout-seconds-per-kilobyte: soon
            """, line: 10, "storages[0].write-timeout-seconds-per-kilobyte", "number of seconds")
        expectError("""
            !s3-storage &s3
                bucket: cas
                access-key: a
                secret-key: b
                hash-prefix-size: -1
            """, line: 10, "storages[0].hash-prefix-size", "at least 0")
        expectError("""
            !s3-storage &s3
                bucket: cas
                acess-key: a
            """, line: 8, "storages[0].acess-key", "unknown option")
    }
}
