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
