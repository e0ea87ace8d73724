import Foundation
import StrataConfig
import StrataStorage
import Testing

/// Mistakes an operator makes get a message naming the cause, with a suggestion where one is likely.
@Suite struct OperatorErrorTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-operator-\(UUID().uuidString)").path

    func expectError(
        _ yaml: String, line: Int, _ fragments: [String], environment: [String: String] = [:],
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        expectConfigError(file: "test.yml", line: line, fragments, sourceLocation: sourceLocation) {
            try Configuration.parse(yaml: yaml, file: "test.yml", environment: environment)
        }
    }

    @Test func anUnsetVariableIsNamed() {
        expectError("""
            server: [!channel {address: !expand-vars "127.0.0.1:${STRATA_TEST_PORT}"}]
            instances: [{name: "", services: []}]
            """, line: 1, ["server[0].address: environment variable STRATA_TEST_PORT is not set"])
        expectError("""
            server: [!channel {address: "127.0.0.1:1"}]
            storages:
              - !disk-storage {path: !expand-path "$DATA/cas"}
            instances: [{name: "", services: []}]
            """, line: 3, ["environment variable DATA is not set", "$DATA/cas"])
    }

    @Test func aSetVariableAndALoneDollarStillExpand() throws {
        let configuration = try Configuration.parse(yaml: """
            server: [!channel {address: !expand-vars "127.0.0.1:${PORT}"}]
            instances: [{name: !expand-vars "cost-$-$PORT", services: []}]
            """, file: "test.yml", environment: ["PORT": "9000"])
        #expect(configuration.instances.map(\.name) == ["cost-$-9000"])
    }

    @Test func aMisspeltKeyGetsADidYouMean() {
        expectError("""
            server: [!channel {address: "127.0.0.1:1"}]
            storages:
              - !lru-storage {sise: 1G}
            instances: [{name: "", services: []}]
            """, line: 3, ["unknown option \"sise\" (did you mean \"size\"?); expected one of: size"])
        expectError("""
            server: [!channel {adress: "127.0.0.1:1"}]
            instances: [{name: "", services: []}]
            """, line: 1, ["(did you mean \"address\"?)"])
    }

    @Test func aMisspeltTagGetsADidYouMean() {
        expectError("""
            server: [!channel {address: "127.0.0.1:1"}]
            storages:
              - !disk-storag {path: /tmp/x}
            instances: [{name: "", services: []}]
            """, line: 3, ["unknown tag !disk-storag (did you mean !disk-storage?); supported storage tags:"])
        expectError("""
            server: [!channel {address: "127.0.0.1:1"}]
            caches:
              - !lru-action-cahce {max-cached-refs: 1}
            instances: [{name: "", services: []}]
            """, line: 3, ["(did you mean !lru-action-cache?)"])
    }

    @Test func aFarOffNameGetsNoSuggestion() {
        expectConfigError(file: "test.yml", line: 3, ["unknown tag !floppy-storage; supported"], sourceLocation: #_sourceLocation) {
            try Configuration.parse(yaml: """
                server: [!channel {address: "127.0.0.1:1"}]
                storages:
                  - !floppy-storage {}
                instances: [{name: "", services: []}]
                """, file: "test.yml")
        }
    }

    @Test func aDiskPathUnderARegularFileSaysSo() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        _ = FileManager.default.createFile(atPath: "\(scratch)/file", contents: Data("x".utf8))
        do {
            try createDirectories(atPath: "\(scratch)/file/cas/cas")
            Issue.record("created a directory under a regular file")
        } catch {
            #expect(error.message == "cannot create directory \(scratch)/file/cas/cas: \(scratch)/file is a regular file, not a directory")
        }
        #expect(throws: Never.self) { try createDirectories(atPath: "\(scratch)/a/b/c") }
        #expect(FileManager.default.fileExists(atPath: "\(scratch)/a/b/c"))
    }

    @Test func anUnreadableFileSaysWhy() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        #expect(throws: ConfigError(file: scratch, line: nil, path: "", message: "cannot read the file: it is a directory, not a file")) {
            try Configuration.load(file: scratch)
        }
        #expect(throws: ConfigError(file: "\(scratch)/none.yml", line: nil, path: "", message: "cannot read the file: No such file or directory")) {
            try Configuration.load(file: "\(scratch)/none.yml")
        }
    }
}
