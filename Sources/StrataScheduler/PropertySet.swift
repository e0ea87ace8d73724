import StrataCore

/// Which platform properties a job may ask for, and whether a bot can run it: BuildGrid's
/// `!dynamic-property-set` and `!static-property-set`, one evaluation shared by every scheduler.
///
/// Unlike BuildGrid 0.9.1, a bot does not register every subset of its properties (exponential in
/// their number): a job matches a bot when each of the job's matched properties is among the bot's.
public enum PropertySet: Sendable, Equatable {
    case dynamic(DynamicPropertySet)
    case `static`(StaticPropertySet)

    /// Checks a job's platform: FAILED_PRECONDITION naming the first property no set allows.
    public func validate(_ platform: [PlatformProperty]) throws(StrataError) {
        switch self {
        case .dynamic(let set): try set.validate(platform)
        case .static(let set): try set.validate(platform)
        }
    }

    /// The keys a job may set that no bot needs to offer.
    public var wildcardPropertyKeys: Set<String> {
        switch self {
        case .dynamic(let set): set.wildcardPropertyKeys
        case .static(let set): set.wildcardPropertyKeys
        }
    }

    /// Whether a bot offering `bot` can run a job asking for `job` (already validated).
    public func matches(job: [PlatformProperty], bot: [PlatformProperty]) -> Bool {
        let wildcards = wildcardPropertyKeys
        let offered = Set(bot)
        return job.allSatisfy { wildcards.contains($0.name) || offered.contains($0) }
    }

    /// Why a queued job asking for `job` waits when the open sessions of its instance offer `bots`,
    /// or nil when one of them can take it: the `waitingReason` every scheduler reports.
    public func waitingReason(job: [PlatformProperty], instance: String, bots: [[PlatformProperty]]) -> String? {
        if bots.contains(where: { matches(job: job, bot: $0) }) { return nil }
        if bots.isEmpty { return instance.isEmpty ? "no bot is connected" : "no bot is connected to instance \(instance)" }
        let offered = bots.flatMap { $0 }
        let missing = job.filter { !matches(job: [$0], bot: offered) }
        if missing.isEmpty { return "no connected bot offers all of \(job.map(\.description).joined(separator: ", "))" }
        return "no connected bot offers \(missing.map(\.description).joined(separator: ", "))"
    }
}

public struct DynamicPropertySet: Sendable, Equatable {
    /// Keys whose values must match a bot's (`match-property-keys`); OSFamily and ISA always are.
    public var matchPropertyKeys: Set<String>
    /// Keys a job may set that no bot needs to offer (`wildcard-property-keys`).
    public var wildcardPropertyKeys: Set<String>

    public static let alwaysMatchedKeys: Set<String> = ["OSFamily", "ISA"]

    public init(matchPropertyKeys: Set<String> = [], wildcardPropertyKeys: Set<String> = []) {
        self.matchPropertyKeys = matchPropertyKeys.union(Self.alwaysMatchedKeys)
        self.wildcardPropertyKeys = wildcardPropertyKeys
    }

    func validate(_ platform: [PlatformProperty]) throws(StrataError) {
        for property in platform where !matchPropertyKeys.contains(property.name) && !wildcardPropertyKeys.contains(property.name) {
            let allowed = matchPropertyKeys.union(wildcardPropertyKeys).sorted().joined(separator: ", ")
            throw .failedPrecondition(
                "unregistered platform property \"\(StrataError.echo(property.name))\" (value \"\(StrataError.echo(property.value))\"); this scheduler allows \(allowed)")
        }
    }
}

public struct StaticPropertySet: Sendable, Equatable {
    /// Labelled sets (`property-labels`): a job's matched properties must be a subset of one of them.
    public var propertyLabels: [(label: String, properties: Set<PlatformProperty>)]
    public var wildcardPropertyKeys: Set<String>

    public init(propertyLabels: [(label: String, properties: Set<PlatformProperty>)], wildcardPropertyKeys: Set<String> = []) {
        self.propertyLabels = propertyLabels
        self.wildcardPropertyKeys = wildcardPropertyKeys
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.wildcardPropertyKeys == b.wildcardPropertyKeys
            && a.propertyLabels.map(\.label) == b.propertyLabels.map(\.label)
            && a.propertyLabels.map(\.properties) == b.propertyLabels.map(\.properties)
    }

    func validate(_ platform: [PlatformProperty]) throws(StrataError) {
        let matched = Set(platform.filter { !wildcardPropertyKeys.contains($0.name) })
        guard !propertyLabels.contains(where: { matched.isSubset(of: $0.properties) }) else { return }
        let known = Set(propertyLabels.flatMap(\.properties))
        if let unknown = matched.sorted().first(where: { !known.contains($0) }) {
            throw .failedPrecondition("no property set allows the platform property \(StrataError.echo(unknown.description))")
        }
        let labels = propertyLabels.map(\.label).joined(separator: ", ")
        throw .failedPrecondition(
            "no property set (\(labels)) allows the platform \(StrataError.echo(matched.sorted().map(\.description).joined(separator: ", ")))")
    }
}
