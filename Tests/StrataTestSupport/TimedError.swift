import StrataCore

/// Runs `operation` and returns how it failed (nil: it succeeded) and how long it took: for the fault
/// tests, which check that a hung backend fails with the right code within a bound.
public func timedError(_ operation: () async throws -> Void) async -> (StrataError?, Duration) {
    let start = ContinuousClock.now
    do {
        try await operation()
        return (nil, ContinuousClock.now - start)
    } catch {
        return (StrataError.from(error), ContinuousClock.now - start)
    }
}
