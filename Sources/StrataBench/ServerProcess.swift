import Foundation

/// CPU time and peak memory of a server process, read from /proc (Linux).
public struct ProcessUsage: Sendable, Codable {
    /// User + system CPU seconds so far.
    public var cpuSeconds: Double
    /// Resident set size now and at its peak (VmHWM), in bytes.
    public var rssBytes: Int64
    public var peakRSSBytes: Int64

    public static func read(pid: Int32) -> ProcessUsage? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after "(comm)": state is field 3; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let utime = Double(fields[11]), let stime = Double(fields[12]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        func kilobytes(_ key: String) -> Int64 {
            for line in status.split(separator: "\n") where line.hasPrefix(key) {
                return Int64(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
            }
            return 0
        }
        return ProcessUsage(
            cpuSeconds: (utime + stime) / ticks, rssBytes: kilobytes("VmRSS:") * 1024,
            peakRSSBytes: kilobytes("VmHWM:") * 1024)
    }
}
