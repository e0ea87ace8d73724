import Foundation
import GRPCCore
import StrataAPI
import StrataCore
import StrataScheduler
import StrataServer
import SwiftProtobuf

/// google.longrunning.Operations over the scheduler's operations. An operation's name carries its
/// instance ("{instance}/operations/{id}"), which routes and authorizes Get, Cancel and Delete;
/// ListOperations' `name` is the instance, as BuildGrid's `bgd operation list` sends it.
public struct OperationsService: Google_Longrunning_Operations.SimpleServiceProtocol {
    let registry: InstanceRegistry

    /// The page size when a request asks for none.
    static let defaultPageSize = 100

    public init(registry: InstanceRegistry) { self.registry = registry }

    public func getOperation(request: Google_Longrunning_GetOperationRequest, context: ServerContext) async throws -> Operation {
        try await scheduler(ofOperation: request.name).operation(request.name).longrunningOperation()
    }

    public func listOperations(
        request: Google_Longrunning_ListOperationsRequest, context: ServerContext
    ) async throws -> Google_Longrunning_ListOperationsResponse {
        let instanceName = Self.listedInstance(request.name, known: registry.instances.keys)
        let endpoint = try registry.service(Instance.Operations.self, of: instanceName)
        let maximum = endpoint.options.maxListOperationsPageSize
        guard request.pageSize >= 0 else { throw StrataError.invalidArgument("page_size \(request.pageSize) is negative") }
        guard request.pageSize <= maximum else {
            throw StrataError.invalidArgument("page_size \(request.pageSize) exceeds this server's max-list-operations-page-size \(maximum)")
        }
        let query = OperationQuery(
            instanceName: instanceName, predicates: try OperationFilter.parse(request.filter),
            pageSize: request.pageSize == 0 ? min(Self.defaultPageSize, maximum) : Int(request.pageSize),
            pageToken: request.pageToken.isEmpty ? nil : request.pageToken)
        let page = try await endpoint.backend.scheduler.listOperations(query)
        return .with {
            $0.operations = page.operations.map { $0.longrunningOperation() }
            $0.nextPageToken = page.nextPageToken
        }
    }

    public func deleteOperation(
        request: Google_Longrunning_DeleteOperationRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        try await scheduler(ofOperation: request.name).deleteOperation(request.name)
        return Google_Protobuf_Empty()
    }

    public func cancelOperation(
        request: Google_Longrunning_CancelOperationRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        try await scheduler(ofOperation: request.name).cancelOperation(request.name)
        return Google_Protobuf_Empty()
    }

    private func scheduler(ofOperation name: String) throws(StrataError) -> any Scheduler {
        guard let instanceName = ScopedName.instance(of: name, collection: "operations") else {
            throw .notFound("no operation named \"\(StrataError.echo(name))\": operation names are {instance}/operations/{id}")
        }
        return try registry.service(Instance.Operations.self, of: instanceName).backend.scheduler
    }

    /// ListOperations' `name`: the instance (BuildGrid's clients), or the collection
    /// "{instance}/operations" google.longrunning's own convention names.
    static func listedInstance(_ name: String, known: some Collection<String>) -> String {
        if known.contains(name) { return name }
        if name == "operations" { return "" }
        if name.hasSuffix("/operations") { return String(name.dropLast("/operations".count)) }
        return name
    }
}

/// BuildGrid's ListOperations filter: clauses `PARAMETER OPERATOR VALUE` joined by `&`, e.g.
/// `stage=COMPLETED & platform=OSFamily:linux & queued_time>=2026-01-01T00:00:00Z`.
enum OperationFilter {
    static let fields: [String: OperationPredicate.Field] = [
        "stage": .stage, "name": .name, "action_digest": .actionDigest, "platform": .platform,
        "queued_time": .queuedTime, "tool_name": .toolName, "invocation_id": .invocationID,
        "correlated_invocations_id": .correlatedInvocationsID,
    ]
    /// BuildGrid's other parameters: named in the error, so the client learns they exist but are not served.
    static let unsupported: Set<String> = [
        "command", "tool_version", "action_mnemonic", "target_id", "configuration_id", "start_time", "completed_time",
        "client_workflow", "client_actor", "client_subject", "sort_order",
    ]
    /// REAPI's stage names, as BuildGrid accepts them (`stage>CACHE_CHECK` is meaningful).
    static let stages = ["UNKNOWN", "CACHE_CHECK", "QUEUED", "EXECUTING", "COMPLETED"]
    /// Longest first, so "<=" is not read as "<".
    static let operators: [OperationPredicate.Comparison] = [.lessOrEqual, .greaterOrEqual, .notEqual, .equal, .less, .greater]

    static func parse(_ filter: String) throws(StrataError) -> [OperationPredicate] {
        guard !filter.trimmingCharacters(in: .whitespaces).isEmpty else { return [] }
        var predicates: [OperationPredicate] = []
        for clause in filter.split(separator: "&", omittingEmptySubsequences: false) {
            predicates.append(try parseClause(clause.trimmingCharacters(in: .whitespaces), in: filter))
        }
        return predicates
    }

    private static func parseClause(_ clause: String, in filter: String) throws(StrataError) -> OperationPredicate {
        let parameterEnd = clause.firstIndex { !($0.isLetter || $0.isNumber || $0 == "_") } ?? clause.endIndex
        let parameter = String(clause[..<parameterEnd])
        let rest = clause[parameterEnd...].drop { $0 == " " }
        guard !parameter.isEmpty, let comparison = operators.first(where: { rest.hasPrefix($0.rawValue) }) else {
            throw .invalidArgument(
                "filter \"\(StrataError.echo(filter))\": \"\(StrataError.echo(clause))\" is not PARAMETER OPERATOR VALUE (operators =, !=, <, <=, >, >=; clauses joined by &)")
        }
        let value = rest.dropFirst(comparison.rawValue.count).trimmingCharacters(in: .whitespaces)
        guard let field = fields[parameter] else {
            let known = fields.keys.sorted().joined(separator: ", ")
            if unsupported.contains(parameter) {
                throw .invalidArgument("filter parameter \"\(parameter)\" is not supported by Strata; supported: \(known)")
            }
            throw .invalidArgument("unknown filter parameter \"\(StrataError.echo(parameter))\"; supported: \(known)")
        }
        guard !value.isEmpty else { throw .invalidArgument("filter clause \"\(StrataError.echo(clause))\" has no value") }
        switch field {
        case .stage:
            guard stages.contains(value.uppercased()) else {
                throw .invalidArgument("[\(StrataError.echo(value))] is not a valid stage; valid: \(stages.joined(separator: ", "))")
            }
        case .platform:
            guard value.split(separator: ":", maxSplits: 1).count == 2 else {
                throw .invalidArgument("platform filter value \"\(StrataError.echo(value))\" is not KEY:VALUE, e.g. platform=OSFamily:linux")
            }
            guard comparison == .equal || comparison == .notEqual else {
                throw .invalidArgument("a platform filter compares with = or != only")
            }
        case .queuedTime:
            guard OperationPredicate.parseTime(value) != nil else {
                throw .invalidArgument("queued_time \"\(StrataError.echo(value))\" is not a time such as 2026-01-01T00:00:00Z or 2026-01-01")
            }
        default: break
        }
        return OperationPredicate(field: field, comparison: comparison, value: value)
    }
}
