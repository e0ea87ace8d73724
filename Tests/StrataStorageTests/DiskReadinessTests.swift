import Foundation
import StrataCore
import StrataStorage
import Testing

@Suite struct DiskReadinessTests {
    /// Ready once prepared; not ready, naming the folder, when a folder it writes to is gone or is a file.
    @Test func readyOnlyWithItsFoldersInPlace() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("strata-ready-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = DiskBlobStore(path: folder.path, sync: false)
        await #expect(throws: StrataError.self) { try await store.checkReadiness() }
        try await store.prepare()
        try await store.checkReadiness()

        let tmp = folder.appendingPathComponent("tmp")
        try FileManager.default.removeItem(at: tmp)
        let missing = await #expect(throws: StrataError.self) { try await store.checkReadiness() }
        #expect(missing?.message.contains(tmp.path) == true, "\(missing?.message ?? "")")
        #expect(missing?.code == .unavailable)

        try Data().write(to: tmp)
        let file = await #expect(throws: StrataError.self) { try await store.checkReadiness() }
        #expect(file?.message.contains("is not a folder") == true, "\(file?.message ?? "")")
    }
}
