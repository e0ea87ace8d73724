import Foundation
import StrataConfig
import StrataCore
import StrataServer
import StrataStorage
import Testing

@Suite struct ConfigurationTests {
    let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-config-\(UUID().uuidString)").path

    func parse(_ yaml: String) throws -> Configuration {
        try Configuration.parse(yaml: yaml, file: "test.yml", environment: ["HOME": scratch, "DATA": scratch])
    }

    /// The error a config must fail with: its line and a fragment of its message.
    func expectError(_ yaml: String, line: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectConfigError(file: "test.yml", line: line, [fragment], sourceLocation: sourceLocation) { try parse(yaml) }
    }

    @Test func defaultFileIsTheEmbeddedDefault() throws {
        let file = try String(contentsOfFile: "\(root)/config/default.yml", encoding: .utf8)
        #expect(file == embeddedDefaultConfiguration)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configuration = try parse(embeddedDefaultConfiguration)
        #expect(configuration.addresses == [ListenAddress(.tcp(host: "127.0.0.1", port: 50051))])
        #expect(configuration.instances.map(\.name) == [""])
        let instance = try #require(configuration.instances.first)
        #expect(instance.cas?.store is VerifyingBlobStore<DiskBlobStore>)
        #expect((instance.cas?.store as? VerifyingBlobStore<DiskBlobStore>)?.backend.root.path == "\(scratch)/.cache/strata/cas")
        #expect(instance.actionCache?.allowsUpdates == true)
    }

    @Test func exampleLoads() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configuration = try Configuration.load(
            file: "\(root)/config/example.yml", environment: ["HOME": scratch])
        #expect(configuration.instances.map(\.name).sorted() == ["", "scratch", "scratch-mirror"])
        #expect(configuration.instances.first { $0.name == "scratch" }?.cas?.store is LRUBlobStore)
    }

    @Test func aliasesShareOneObject() throws {
        let configuration = try parse("""
            server:
              - !channel
                address: "[::1]:9000"
                insecure-mode: true
            storages:
              - !lru-storage &mem
                size: 2048M
            instances:
              - name: a
                services:
                  - !cas
                    storage: *mem
                  - !bytestream
                    storage: *mem
                    read-only: true
            """)
        let instance = try #require(configuration.instances.first)
        let cas = try #require(instance.cas?.store as? LRUBlobStore)
        let byteStream = try #require(instance.byteStream?.store as? LRUBlobStore)
        #expect(cas === byteStream)
        #expect(cas.capacityBytes == 2048 << 20)
        #expect(instance.byteStream?.readOnly == true && instance.cas?.readOnly == false)
        #expect(configuration.addresses == [ListenAddress(.tcp(host: "::1", port: 9000))])
    }

    @Test(arguments: [
        ("1024", Int64(1024)), ("2048M", Int64(2048 << 20)), ("1g", Int64(1 << 30)), ("512KB", Int64(512 << 10)),
        ("3Tb", Int64(3) << 40), ("10b", Int64(10)),
    ])
    func sizes(_ text: String, _ bytes: Int64) throws {
        let configuration = try parse("""
            server: [!channel {address: "127.0.0.1:1"}]
            instances:
              - name: ""
                services:
                  - !cas
                    storage: !lru-storage {size: \(text)}
            """)
        #expect((configuration.instances[0].cas?.store as? LRUBlobStore)?.capacityBytes == bytes)
    }

    @Test func errorsNameFileLineAndKey() {
        let head = """
            server:
              - !channel
                address: "127.0.0.1:50051"
            instances:
              - name: ""
                services:

            """
        expectError(head + "      - !cas\n        storage: !redis-storage {}\n", line: 8, "!redis-storage is not supported by Strata yet")
        expectError(head + "      - !cas\n        storage: !floppy-storage {}\n", line: 8, "unknown tag !floppy-storage")
        expectError(head + "      - !cas\n        storage: !lru-storage {sise: 1G}\n", line: 8, "unknown option \"sise\"")
        expectError(head + "      - !cas\n        storage: !lru-storage {size: lots}\n", line: 8, "\"lots\" is not a size")
        expectError(head + "      - !cas\n        storage: *nothing\n", line: 8, "not valid YAML")
        expectError(head + "      - !execution {}\n", line: 7, "!execution needs a scheduler")
        expectError(head + "      - !cas {}\n", line: 7, "!cas needs a storage")
        expectError("""
            server:
              - !channel
                address: "127.0.0.1:50051"
                insecure-mode: false
            instances: [{name: "", services: []}]
            """, line: 4, "insecure-mode: false needs credentials")
        expectError("""
            server:
              - !channel
                address: "nowhere"
            instances: [{name: "", services: []}]
            """, line: 3, "not host:port")
        expectError("""
            server: [!channel {address: "127.0.0.1:1"}]
            instances:
              - name: x/blobs/y
                services: []
            """, line: 3, "reserved segment")
        expectError("""
            server: [!channel {address: "127.0.0.1:1"}]
            instances:
              - name: a
              - name: a
            """, line: 4, "used twice")
    }

    @Test func stringTagsExpandAndRead() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        _ = FileManager.default.createFile(atPath: "\(scratch)/name", contents: Data("from-file\n".utf8))
        let configuration = try parse("""
            server: [!channel {address: !expand-vars "127.0.0.1:${PORT}"}]
            instances:
              - name: !read-file $DATA/name
                services:
                  - !cas
                    storage: !disk-storage {path: !expand-path ~/cas}
            """.replacingOccurrences(of: "${PORT}", with: "4242"))
        #expect(configuration.instances[0].name == "from-file")
        #expect((configuration.instances[0].cas?.store as? VerifyingBlobStore<DiskBlobStore>)?.backend.root.path == "\(scratch)/cas")
    }
}
