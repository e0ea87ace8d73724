import Foundation

/// Parses a byte size as BuildGrid writes them: a number with an optional K, M, G or T (binary units,
/// any case) and an optional trailing B: `2048M`, `1g`, `512KB`, `10b`. Nil when malformed or too large.
public func parseByteSize(_ text: String) -> Int64? {
    var body = text.trimmingCharacters(in: .whitespaces).lowercased()
    if body.hasSuffix("b") { body.removeLast() }
    let units: [Character: Int64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40]
    var multiplier: Int64 = 1
    if let last = body.last, let unit = units[last] {
        multiplier = unit
        body.removeLast()
    }
    guard !body.isEmpty, body.allSatisfy(\.isASCII), let number = Int64(body) else { return nil }
    let (product, overflow) = number.multipliedReportingOverflow(by: multiplier)
    return overflow ? nil : product
}

/// A byte count as an operator reads it in a log line: `512 bytes`, `1 GiB`, `12.3 GiB` (binary units,
/// like the sizes `parseByteSize` reads).
public func describeBytes(_ bytes: Int64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    guard bytes >= 1024 || bytes <= -1024 else { return bytes == 1 ? "1 byte" : "\(bytes) bytes" }
    var value = Double(bytes)
    var unit = -1
    while abs(value) >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    let tenths = (value * 10).rounded() / 10
    let text = tenths == tenths.rounded() ? String(Int64(tenths)) : String(format: "%.1f", tenths)
    return "\(text) \(units[unit])"
}
