import Foundation
import StrataCore

#if canImport(Glibc)
import Glibc
#endif

/// Creates `path` and its missing parents (`mkdir -p`), with an error that names the cause as an
/// operator reads it: which component is a file rather than a directory, or which one may not be
/// written. (Foundation's createDirectory says only "NSCocoaErrorDomain error 512".)
public func createDirectories(atPath path: String) throws(StrataError) {
    let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    var current = ""
    for component in absolute.split(separator: "/", omittingEmptySubsequences: true) {
        current += "/" + component
        var info = stat()
        if stat(current, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFDIR else {
                throw StrataError.internal(
                    "cannot create directory \(path): \(current) is \(fileKind(info.st_mode)), not a directory")
            }
            continue
        }
        if mkdir(current, 0o755) != 0 && errno != EEXIST {
            let reason = String(cString: strerror(errno))
            let parent = String(current[..<current.lastIndex(of: "/")!])
            switch errno {
            case EACCES, EPERM, EROFS:
                throw StrataError.internal("cannot create directory \(path): cannot create \(current) in \(parent.isEmpty ? "/" : parent): \(reason)")
            case ENOSPC, EDQUOT:
                throw StrataError.resourceExhausted("cannot create directory \(path): \(reason)")
            default:
                throw StrataError.internal("cannot create directory \(path): mkdir \(current): \(reason)")
            }
        }
    }
}

private func fileKind(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFREG: "a regular file"
    case S_IFSOCK: "a socket"
    case S_IFIFO: "a named pipe"
    case S_IFCHR, S_IFBLK: "a device"
    default: "a special file"
    }
}

/// Bytes an unprivileged writer may still use on the filesystem that holds `path`, or would hold it:
/// measured at its nearest existing ancestor, so nothing needs creating first. Nil if none can be read.
public func availableBytes(onFileSystemOf path: String) -> Int64? {
    var current = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    while true {
        var info = statvfs()
        if statvfs(current, &info) == 0 {
            let (bytes, overflow) = Int64(info.f_bavail).multipliedReportingOverflow(by: Int64(info.f_frsize))
            return overflow ? .max : bytes
        }
        guard errno == ENOENT || errno == ENOTDIR, let slash = current.lastIndex(of: "/"), current != "/" else { return nil }
        current = slash == current.startIndex ? "/" : String(current[..<slash])
    }
}
