import StrataCore
import StrataScheduler
import Testing

@testable import StrataExecution

@Suite struct OperationFilterTests {
    @Test func parsesBuildGridsSyntax() throws {
        let predicates = try OperationFilter.parse("stage=COMPLETED & platform=OSFamily:linux&queued_time>=2026-01-01T00:00:00Z")
        #expect(predicates == [
            OperationPredicate(field: .stage, comparison: .equal, value: "COMPLETED"),
            OperationPredicate(field: .platform, comparison: .equal, value: "OSFamily:linux"),
            OperationPredicate(field: .queuedTime, comparison: .greaterOrEqual, value: "2026-01-01T00:00:00Z"),
        ])
        #expect(try OperationFilter.parse("  ") == [])
        #expect(try OperationFilter.parse("stage>CACHE_CHECK&queued_time<2026-01-01") == [
            OperationPredicate(field: .stage, comparison: .greater, value: "CACHE_CHECK"),
            OperationPredicate(field: .queuedTime, comparison: .less, value: "2026-01-01"),
        ])
        #expect(try OperationFilter.parse("tool_name != bazel") == [OperationPredicate(field: .toolName, comparison: .notEqual, value: "bazel")])
    }

    @Test(arguments: [
        ("stage=DONE", "not a valid stage"),
        ("colour=red", "unknown filter parameter \"colour\""),
        ("command=gcc", "\"command\" is not supported"),
        ("stage", "is not PARAMETER OPERATOR VALUE"),
        ("stage=QUEUED &", "is not PARAMETER OPERATOR VALUE"),
        ("platform=linux", "is not KEY:VALUE"),
        ("queued_time>yesterday", "is not a time"),
        ("name=", "has no value"),
    ])
    func refusesBadFilters(filter: String, expected: String) {
        #expect {
            try OperationFilter.parse(filter)
        } throws: { error in
            guard let error = error as? StrataError else { return false }
            return error.code == .invalidArgument && error.message.contains(expected)
        }
    }

    @Test func scopedNamesCarryTheirInstance() {
        #expect(ScopedName.instance(of: "operations/abc", collection: "operations") == "")
        #expect(ScopedName.instance(of: "main/ci/operations/abc", collection: "operations") == "main/ci")
        #expect(ScopedName.instance(of: "operations/", collection: "operations") == nil)
        #expect(ScopedName.instance(of: "abc", collection: "operations") == nil)
        #expect(ScopedName.instance(of: "x/bots/1", collection: "bots") == "x")
    }
}
