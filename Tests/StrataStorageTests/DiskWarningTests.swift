import Foundation
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

/// Warnings of a full disk storage say what happened and where: evictions and refused writes.
@Suite struct DiskWarningTests {
    @Test(arguments: [true, false]) func aFullStoreWarnsNamingItsFolder(evicting: Bool) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-warn-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = CapturedLog()
        let store = DiskBlobStore(
            path: root, sync: false, budget: .init(maxBytes: 2000, evictLeastRecentlyUsed: evicting),
            logger: log.logger(label: "strata.disk", level: .trace))
        for _ in 0..<3 {
            let blob = Blob.random(size: 1000)
            try? await store.write(blob.digest, data: blob.data)
        }
        let warnings = log.all.filter { $0.level == .warning }.map(\.message)
        #expect(warnings.count == 1, "\(warnings)")
        let expected = evicting ? "evicting 1 least recently used blobs" : "cannot store blob"
        #expect(warnings.first?.contains("disk storage \(URL(fileURLWithPath: root).standardizedFileURL.path)") == true, "\(warnings)")
        #expect(warnings.first?.contains(expected) == true, "\(warnings)")
    }
}
