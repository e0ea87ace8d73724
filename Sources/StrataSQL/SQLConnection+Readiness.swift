import PostgresNIO
import StrataCore

extension SQLConnection: ReadinessCheckable {
    /// SELECT 1 on a pooled connection: the database is reachable, accepts the credentials and runs a
    /// statement. (Whether the schema is migrated is `strata migrate`'s business, not a probe's.)
    public func checkReadiness() async throws {
        let logger = self.logger
        try await withConnection("checking readiness (SELECT 1)") { connection in
            _ = try await connection.query("SELECT 1", logger: logger).collect()
        }
    }
}
