/// A backend with work to do before it serves that loading a configuration must not do: creating its
/// folders, clearing what a crashed run left behind, counting what it holds.
///
/// Loading a configuration builds every backend without touching anything (`strata config check`,
/// `cleanup`, `janitor` and `migrate` load the same file a live server runs, and must not disturb it);
/// `strata serve` runs `prepare()` on each configured backend before it listens (`Configuration.prepare()`).
public protocol Preparable: Sendable {
    /// Idempotent, and safe while another process uses the same backend (a second server on the same
    /// folder, a maintenance command).
    func prepare() async throws
}
