import Foundation
import PostgresNIO
import Synchronization

extension SQLConnection {
    /// A connection of its own, outside the pool, with the pool's settings (endpoint, credentials, TLS,
    /// start-up parameters, connection timeout): for a LISTEN held as long as the process runs, which
    /// would otherwise take one of the pool's connections away from queries for good.
    func openDedicatedConnection() async throws -> PostgresConnection {
        var configuration: PostgresConnection.Configuration
        switch settings.endpoint {
        case .tcp(let host, let port):
            var tls = PostgresConnection.Configuration.TLS.disable
            if let (configuration, required) = Self.tlsConfiguration(settings.tls) {
                let context = try NIOSSLContext(configuration: configuration)
                tls = required ? .require(context) : .prefer(context)
            }
            configuration = .init(
                host: host, port: port, username: settings.username, password: settings.password, database: settings.database, tls: tls)
        case .unixSocket(let path):
            configuration = .init(
                unixSocketPath: path, username: settings.username, password: settings.password, database: settings.database)
        }
        configuration.options.connectTimeout = .milliseconds(settings.connectionTimeout.milliseconds)
        configuration.options.additionalStartupParameters = Self.startupParameters(settings)
        return try await PostgresConnection.connect(
            configuration: configuration, id: Self.dedicatedConnectionIDs.add(1, ordering: .relaxed).newValue, logger: logger)
    }

    /// Ids of dedicated connections, for postgres-nio's logs (far from the pool's, which count from 0).
    private static let dedicatedConnectionIDs = Atomic<Int>(1_000_000)
}
