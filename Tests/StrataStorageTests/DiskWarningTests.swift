import Foundation
import Logging
import StrataCore
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// Warnings of a full disk storage say what happened and where: evictions and refused writes.
@Suite struct DiskWarningTests {
    final class Lines: Sendable {
        let lines = Mutex<[(Logger.Level, String)]>([])

        var logger: Logger {
            Logger(label: "strata.disk") { _ in Handler(sink: self) }
        }

        struct Handler: LogHandler {
            let sink: Lines
            var logLevel: Logger.Level = .trace
            var metadata: Logger.Metadata = [:]
            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }
            func log(event: LogEvent) { sink.lines.withLock { $0.append((event.level, "\(event.message)")) } }
        }
    }

    @Test(arguments: [true, false]) func aFullStoreWarnsNamingItsFolder(evicting: Bool) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-warn-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = Lines()
        let store = DiskBlobStore(
            path: root, sync: false, budget: .init(maxBytes: 2000, evictLeastRecentlyUsed: evicting), logger: log.logger)
        for _ in 0..<3 {
            let blob = Blob.random(size: 1000)
            try? await store.write(blob.digest, data: blob.data)
        }
        let warnings = log.lines.withLock { $0 }.filter { $0.0 == .warning }.map(\.1)
        #expect(warnings.count == 1, "\(warnings)")
        let expected = evicting ? "evicting 1 least recently used blobs" : "cannot store blob"
        #expect(warnings.first?.contains("disk storage \(URL(fileURLWithPath: root).standardizedFileURL.path)") == true, "\(warnings)")
        #expect(warnings.first?.contains(expected) == true, "\(warnings)")
    }
}
