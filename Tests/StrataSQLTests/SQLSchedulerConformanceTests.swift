import Logging
@testable import StrataSQL
import StrataScheduler
import StrataTestSupport
import Testing

/// The shared scheduler contract, against SQLScheduler on a fresh schema per check.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_POSTGRES")))
struct SQLSchedulerConformanceTests {
    @Test(arguments: SchedulerConformance.cases)
    func conformance(_ check: SchedulerConformance) async throws {
        try await SQLTestDatabase.with { connection, _ in
            try await check.run { settings in
                SQLScheduler(connection: connection, settings: settings, logger: Logger(label: "strata.test.scheduler"))
            }
        }
    }
}
