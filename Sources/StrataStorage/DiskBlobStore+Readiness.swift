import Foundation
import StrataCore
#if canImport(Glibc)
import Glibc
#endif

extension DiskBlobStore: ReadinessCheckable {
    /// Its folders exist and this process may write them: `cas` (where blobs land) and `tmp` (where
    /// writes start). Writes nothing.
    public func checkReadiness() async throws {
        for folder in ["cas", "tmp"] {
            try checkWritableFolder(root.appendingPathComponent(folder).path, of: "disk storage at \(root.path)")
        }
    }
}

/// Throws, naming `owner`, unless `path` is a folder this process may create files in.
public func checkWritableFolder(_ path: String, of owner: String) throws(StrataError) {
    var info = stat()
    guard stat(path, &info) == 0 else {
        throw StrataError.unavailable("\(owner): \(path): \(String(cString: strerror(errno)))")
    }
    guard (info.st_mode & S_IFMT) == S_IFDIR else {
        throw StrataError.unavailable("\(owner): \(path) is not a folder")
    }
    guard access(path, W_OK | X_OK) == 0 else {
        throw StrataError.unavailable("\(owner): \(path) is not writable: \(String(cString: strerror(errno)))")
    }
}
