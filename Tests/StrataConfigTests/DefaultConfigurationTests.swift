import Foundation
import StrataActionCache
import StrataConfig
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

/// The embedded default as a new user meets it: nothing lost on restart, a disk budget, said at start.
@Suite struct DefaultConfigurationTests {
    let home = FileManager.default.temporaryDirectory.appendingPathComponent("strata-home-\(UUID().uuidString)").path

    func loadDefault() throws -> Configuration {
        try Configuration.parse(yaml: embeddedDefaultConfiguration, file: "<embedded default>", environment: ["HOME": home])
    }

    @Test func theActionCacheSurvivesARestart() async throws {
        defer { try? FileManager.default.removeItem(atPath: home) }
        let action = Blob.random(size: 140).digest
        let result = ActionCacheConformance.result(stdout: "built before the restart")
        let first = try #require(try loadDefault().instances.first?.actionCache)
        try await first.update(action, result)
        let restarted = try #require(try loadDefault().instances.first?.actionCache)
        #expect(try await restarted.get(action) == result)
        #expect(FileManager.default.fileExists(atPath: "\(home)/.cache/strata/action-cache"))
    }

    @Test func theCASHasABudgetOfHalfTheSpaceItCouldUseAndSaysSo() throws {
        defer { try? FileManager.default.removeItem(atPath: home) }
        let before = try #require(availableBytes(onFileSystemOf: home))
        let configuration = try loadDefault()
        let after = try #require(availableBytes(onFileSystemOf: home))
        let store = try #require(configuration.instances.first?.cas?.store.unwrapped as? DiskBlobStore)
        let budget = try #require(store.budget)
        #expect(budget.evictLeastRecentlyUsed)
        // An empty store: half the free space, which other processes may change a little meanwhile.
        let low = min(before, after) / 2 - (64 << 20), high = max(before, after) / 2 + (64 << 20)
        #expect(budget.maxBytes >= low && budget.maxBytes <= high, "\(budget.maxBytes) not about half of \(before)")
        let summary = configuration.storageSummary.joined(separator: "\n")
        #expect(summary.contains("!disk-storage at \(home)/.cache/strata/cas (max-size 50%free = \(describeBytes(budget.maxBytes)): 50% of "), "\(summary)")
        #expect(summary.contains("evicting least recently used"), "\(summary)")
        #expect(configuration.cacheSummary == ["!disk-action-cache at \(home)/.cache/strata/action-cache (max-size 1 GiB, evicting least recently used)"])
    }

    @Test func aShareOfFreeSpaceCountsWhatTheStoreHolds() async throws {
        defer { try? FileManager.default.removeItem(atPath: home) }
        let path = "\(home)/cas"
        let blob = Blob.random(size: 3 << 20)
        try await DiskBlobStore(path: path).write(blob.digest, data: blob.data)
        #expect(DiskBlobStore.storedBytes(path: path) == 3 << 20)
        let configuration = try Configuration.parse(yaml: """
            server: [!channel {address: "127.0.0.1:1"}]
            instances:
              - name: ""
                services: [!cas {storage: !disk-storage {path: \(path), max-size: 100%free}}]
            """, file: "test.yml")
        let summary = configuration.storageSummary.joined()
        #expect(summary.contains("100% of ") && summary.contains(" free + 3 MiB held"), "\(summary)")
    }

    @Test(arguments: ["0%free", "101%free", "half%free", "50%"])
    func aBadShareOfFreeSpaceIsRefused(_ text: String) {
        expectConfigError(file: "test.yml", line: 4, ["storages[0].max-size"], sourceLocation: #_sourceLocation) {
            try Configuration.parse(yaml: """
                server: [!channel {address: "127.0.0.1:1"}]
                storages:
                  - !disk-storage
                    max-size: \(text)
                    path: \(home)/cas
                instances: [{name: "", services: []}]
                """, file: "test.yml")
        }
    }

    @Test func describedSizes() {
        #expect(describeBytes(0) == "0 bytes")
        #expect(describeBytes(1) == "1 byte")
        #expect(describeBytes(1023) == "1023 bytes")
        #expect(describeBytes(1 << 30) == "1 GiB")
        #expect(describeBytes(3 << 19) == "1.5 MiB")
        #expect(describeBytes(.max) == "8 EiB")
    }
}
