import StrataCore

extension RedisClient: ReadinessCheckable {
    /// PING, through the pool as any command (bounded by the readiness deadline, retries included).
    public func checkReadiness() async throws {
        let reply = try await send("PING")
        guard reply.string == "PONG" else {
            throw StrataError.unavailable("Redis at \(endpoint) answered PING with \(reply) instead of PONG")
        }
    }
}
