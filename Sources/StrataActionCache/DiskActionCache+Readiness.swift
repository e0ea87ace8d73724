import Foundation
import StrataCore
import StrataStorage

extension DiskActionCache: ReadinessCheckable {
    /// Its folder may be written: the folder itself, or, before the first entry made it, the nearest
    /// existing folder above it (where the first write creates it). Writes nothing.
    public func checkReadiness() async throws {
        var folder = root
        while !folder.isEmpty, !FileManager.default.fileExists(atPath: folder) {
            folder = (folder as NSString).deletingLastPathComponent
        }
        try checkWritableFolder(folder.isEmpty ? "/" : folder, of: "disk action cache at \(root)")
    }
}
