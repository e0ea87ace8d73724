import CoreMetrics
import GRPCCore
import StrataCore
import StrataStorage
import Synchronization

/// Records every RPC when it ends (after its streamed response, if any): its count and duration by
/// method, instance and gRPC status code, and the payload bytes the services counted on the
/// `RequestContext`. Placed after `RequestContextInterceptor` (whose context it reads) and before
/// the error mapping's caller sees the status, so the code is the one the client gets.
///
/// The metric objects are made once per label set and kept: a request costs one lock and a dictionary
/// lookup, not the factory's registration.
struct MetricsInterceptor: ServerInterceptor {
    let metrics: RPCMetrics

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let method = context.descriptor.method
        var response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            metrics.record(method: method, code: ErrorStatusInterceptor.codeAndMessage(error).code)
            throw error
        }
        if case .failure(let error) = response.accepted { metrics.record(method: method, code: error.code) }
        response.wrapProducer { [metrics] producer in
            { writer in
                do {
                    let trailers = try await producer(writer)
                    metrics.record(method: method, code: nil)
                    return trailers
                } catch {
                    metrics.record(method: method, code: ErrorStatusInterceptor.codeAndMessage(error).code)
                    throw error
                }
            }
        }
        return response
    }
}

/// The per-RPC metrics, made from one `MetricsFactory` (the README lists them).
public final class RPCMetrics: Sendable {
    private let factory: any MetricsFactory

    private struct CallKey: Hashable {
        let method: String
        let instance: String
        let code: Int
    }
    /// The metrics one (method, instance, code) records to; the byte counters are shared by the codes
    /// of one (method, instance).
    private struct Call {
        let count: Counter
        let duration: CoreMetrics.Timer
        let received: Counter
        let sent: Counter
    }
    private struct BytesKey: Hashable {
        let method: String
        let instance: String
    }
    private struct Handles {
        var calls: [CallKey: Call] = [:]
        var bytes: [BytesKey: (received: Counter, sent: Counter)] = [:]
    }
    private let handles = Mutex(Handles())
    private struct ActionCacheTally {
        let hits: Counter
        let misses: Counter
        var hitCount = 0
        var missCount = 0
    }
    private let actionCache: Mutex<[String: ActionCacheTally]> = Mutex([:])

    public init(factory: any MetricsFactory) {
        self.factory = factory
    }

    /// gRPC's names of its status codes, by number.
    /// Records the RPC of `RequestContext.current` that ended with `code` (nil: OK).
    func record(method: String, code: RPCError.Code?) {
        guard let context = RequestContext.current else { return }
        let elapsed = ContinuousClock.now - context.started
        // A request refused before its instance was looked up (a malformed name) has none.
        let instance = context.instanceName ?? ""
        let number = code?.rawValue ?? 0
        let call = handles.withLock { handles in
            let callKey = CallKey(method: method, instance: instance, code: number)
            if let call = handles.calls[callKey] { return call }
            let bytesKey = BytesKey(method: method, instance: instance)
            let bytes = handles.bytes[bytesKey] ?? {
                let labels = [("method", method), ("instance", instance)]
                let made = (
                    received: Counter(label: "strata_rpc_received_bytes_total", dimensions: labels, factory: factory),
                    sent: Counter(label: "strata_rpc_sent_bytes_total", dimensions: labels, factory: factory))
                handles.bytes[bytesKey] = made
                return made
            }()
            let labels = [("method", method), ("instance", instance), ("code", code?.statusName ?? "OK")]
            let call = Call(
                count: Counter(label: "strata_rpc_requests_total", dimensions: labels, factory: factory),
                duration: CoreMetrics.Timer(label: "strata_rpc_duration_seconds", dimensions: labels, factory: factory),
                received: bytes.received, sent: bytes.sent)
            handles.calls[callKey] = call
            return call
        }
        call.count.increment()
        call.duration.recordNanoseconds(elapsed.nanosecondsForMetrics)
        let received = context.bytesReceived
        if received > 0 { call.received.increment(by: received) }
        let sent = context.bytesSent
        if sent > 0 { call.sent.increment(by: sent) }
        if (method == "GetActionResult" || method == "GET /ac") && (number == 0 || number == RPCError.Code.notFound.rawValue) {
            let counter = actionCache.withLock { tallies in
                var tally = tallies[instance] ?? {
                    let labels = [("instance", instance)]
                    return ActionCacheTally(
                        hits: Counter(label: "strata_action_cache_hits_total", dimensions: labels, factory: factory),
                        misses: Counter(label: "strata_action_cache_misses_total", dimensions: labels, factory: factory))
                }()
                if number == 0 { tally.hitCount += 1 } else { tally.missCount += 1 }
                tallies[instance] = tally
                return number == 0 ? tally.hits : tally.misses
            }
            counter.increment()
        }
    }

    /// Records a request of Bazel's HTTP cache protocol (`method` such as `GET /ac`) as an RPC, with
    /// the status its outcome maps to (nil: OK).
    public func record(request method: String, error: StrataError?) {
        record(method: method, code: error.map { ErrorStatusInterceptor.codeAndMessage($0).code })
    }

    /// GetActionResult's hits and misses since start, by instance (for `/status`).
    public func actionCacheResults() -> [String: (hits: Int, misses: Int)] {
        actionCache.withLock { $0.mapValues { (hits: $0.hitCount, misses: $0.missCount) } }
    }
}
