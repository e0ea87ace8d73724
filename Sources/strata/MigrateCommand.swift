import ArgumentParser
import Foundation
import StrataConfig

/// `strata migrate CONFIG`: brings the SQL schema of every `!sql-connection` in CONFIG up to date.
/// `strata serve` migrates by itself before the first use; this is for operators who run schema
/// changes as a separate, supervised step before rolling out a new version.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply Strata's SQL schema migrations for every !sql-connection in CONFIG, then exit.")

    @Argument(help: "The configuration file.")
    var config: String

    func run() async throws {
        let configuration: Configuration
        do {
            configuration = try Configuration.load(file: config)
        } catch {
            FileHandle.standardError.write(Data("strata: \(describeError(error))\n".utf8))
            throw ExitCode(1)
        }
        guard !configuration.sqlConnections.isEmpty else {
            print("\(config): no !sql-connection to migrate")
            return
        }
        var failed = false
        for connection in configuration.sqlConnections {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await connection.run() }
                do {
                    let applied = try await connection.migrate()
                    print("SQL \(connection.settings.displayName): " + (applied.isEmpty
                        ? "schema up to date"
                        : "applied migration\(applied.count == 1 ? "" : "s") \(applied.map(String.init).joined(separator: ", "))"))
                } catch {
                    FileHandle.standardError.write(Data("strata: SQL \(connection.settings.displayName): \(describeError(error))\n".utf8))
                    failed = true
                }
                group.cancelAll()
            }
        }
        if failed { throw ExitCode(1) }
    }
}
