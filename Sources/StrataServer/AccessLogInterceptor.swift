import GRPCCore
import Logging
import StrataAPI
import StrataCore
import StrataProto

/// Writes one line per RPC once it is over (its response streamed, or its failure): method, instance,
/// status, duration, bytes received and sent, peer, principal, and the client's tool invocation id and
/// action mnemonic; a failure with its message. Runs right after `RequestContextInterceptor`, whose
/// context it reads, so the duration covers everything the server did for the call.
///
/// Lines are at info level (`--log-level warning` hides them, `--no-access-log` turns them off); the
/// health service's at debug, as probes call it every few seconds.
public struct AccessLogInterceptor: ServerInterceptor {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    static let healthService = Grpc_Health_V1_Health.descriptor.fullyQualifiedService

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        var response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            log(error)
            throw error
        }
        if case .failure(let error) = response.accepted { log(error) }
        response.wrapProducer { producer in
            { writer in
                do {
                    let trailers = try await producer(writer)
                    log(nil)
                    return trailers
                } catch {
                    log(error)
                    throw error
                }
            }
        }
        return response
    }

    /// The line of the current RPC (or HTTP cache request), ended by `error` (nil: OK).
    public func log(_ error: (any Error)?) {
        guard let request = RequestContext.current else { return }
        let level: Logger.Level = request.service == Self.healthService ? .debug : .info
        guard logger.logLevel <= level else { return }
        let failure = error.map(ErrorStatusInterceptor.codeAndMessage)
        let status = failure?.code.statusName ?? "OK"
        logger.log(level: level, "\(request.method) \(status)", metadata: Self.fields(request, status: status, error: failure?.message))
    }

    static func fields(_ request: RequestContext, status: String, error: String?) -> Logger.Metadata {
        let elapsed = ContinuousClock.now - request.started
        var fields: Logger.Metadata = [
            "rpc": "\(request.service)/\(request.method)",
            "instance": "\(request.instanceName ?? "")",
            "status": "\(status)",
            "duration_ms": "\(milliseconds(elapsed))",
            "bytes_received": "\(request.bytesReceived)",
            "bytes_sent": "\(request.bytesSent)",
            "peer": "\(request.peer)",
            "principal": "\(request.principal)",
        ]
        if !request.metadata.toolInvocationID.isEmpty { fields["invocation"] = "\(request.metadata.toolInvocationID)" }
        if !request.metadata.actionMnemonic.isEmpty { fields["mnemonic"] = "\(request.metadata.actionMnemonic)" }
        if !request.metadata.toolName.isEmpty { fields["tool"] = "\(request.metadata.toolName) \(request.metadata.toolVersion)" }
        if let error { fields["error"] = "\(error)" }
        return fields
    }

    /// Milliseconds with three decimals, e.g. `1.234`.
    static func milliseconds(_ duration: Duration) -> String {
        let micros = duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000
        let fraction = String(micros % 1000)
        return "\(micros / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }
}
