import StrataCore
import StrataSQL
import StrataTestSupport
import Testing

@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLReadinessTests {
    /// SELECT 1 answers on the test database (read-write and sql-ro alike); a server that is not there
    /// is reported within the readiness timeout, naming the database.
    @Test func selectOneAnswersAndAMissingServerDoesNot() async throws {
        try await SQLTestDatabase.with { connection, readOnly in
            try await connection.checkReadiness()
            try await readOnly.checkReadiness()
        }
        let port = try freeLoopbackPort()
        let absent = SQLConnection(settings: try SQLTestDatabase.settings(url: "postgres://strata@127.0.0.1:\(port)/strata", schema: "s"))
        let results = try await SQLTestDatabase.running([absent]) {
            await Readiness(backends: [.init(backend: absent, name: "!sql-connection", location: "s.yml:3")], timeout: .seconds(1)).check()
        }
        // Refused at once, it says where; on a loaded machine the timeout may answer first.
        let problem = try #require(results.first?.problem)
        #expect(problem.contains("\(port)") || problem.hasPrefix("no answer within"), "\(problem)")
    }
}
