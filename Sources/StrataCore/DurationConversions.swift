import Foundation

extension Duration {
    /// The most seconds a setting (configuration, command line) may ask for: 100 years. Beyond it a
    /// number is a mistake, and far enough beyond it would not fit the milliseconds Strata counts in.
    public static let maximumSettingSeconds: Double = 100 * 365 * 86_400

    /// `seconds` as a duration, when it is a finite number in `0...maximumSettingSeconds`.
    public init?(settingSeconds seconds: Double) {
        guard seconds.isFinite, (0...Self.maximumSettingSeconds).contains(seconds) else { return nil }
        self = .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// In seconds, as Foundation's dates count them.
    public var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// In whole milliseconds, rounded down: what Redis scores and PostgreSQL settings take.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
