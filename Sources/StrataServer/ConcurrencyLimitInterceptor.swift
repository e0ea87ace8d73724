import GRPCCore
import Synchronization

/// A ceiling on the RPCs the server runs at once, across every listener: BuildGrid's top-level
/// `maximum-concurrent-rpcs` and `limiter: {concurrent-request-limit}`.
public struct ConcurrencyLimit: Sendable, Hashable {
    /// The configuration key that set it, which a refused client is told.
    public var name: String
    public var maxInFlight: Int

    public init(name: String, maxInFlight: Int) {
        self.name = name
        self.maxInFlight = maxInFlight
    }
}

/// Counts the RPCs in flight and refuses one past its `ConcurrencyLimit` with RESOURCE_EXHAUSTED at
/// once, naming the limit: a client is told to back off rather than queued behind work that may take
/// minutes (a large upload), and the server's memory stays bounded by the limit.
///
/// An RPC counts from its arrival until it ends: a streamed response (a ByteStream Read) until its last
/// message is written or the RPC fails. The health service is never refused: a probe of a busy server
/// must not report it dead.
final class ConcurrencyLimitInterceptor: ServerInterceptor {
    static let exemptServices: Set<String> = ["grpc.health.v1.Health"]

    let limit: ConcurrencyLimit
    private let inFlight = Atomic<Int>(0)

    init(_ limit: ConcurrencyLimit) { self.limit = limit }

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        if Self.exemptServices.contains(context.descriptor.service.fullyQualifiedService) {
            return try await next(request, context)
        }
        guard let permit = acquire() else {
            throw RPCError(
                code: .resourceExhausted,
                message: "\(limit.name): the server runs \(limit.maxInFlight) RPCs at once already; retry later")
        }
        var response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            permit.release()
            throw error
        }
        let accepted = response.wrapProducer { producer in
            { writer in
                defer { permit.release() }
                return try await producer(writer)
            }
        }
        if !accepted { permit.release() }
        return response
    }

    /// A place under the limit, or nil when every place is taken.
    private func acquire() -> Permit? {
        let admitted = inFlight.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
        guard admitted <= limit.maxInFlight else {
            inFlight.wrappingSubtract(1, ordering: .acquiringAndReleasing)
            return nil
        }
        return Permit(owner: self)
    }

    /// One RPC's place under the limit, given back once: when it ends, or when it is dropped without
    /// its response ever being produced (the transport failed first), so a place never leaks.
    private final class Permit: Sendable {
        private let owner: ConcurrencyLimitInterceptor
        private let released = Atomic<Bool>(false)

        init(owner: ConcurrencyLimitInterceptor) { self.owner = owner }

        func release() {
            guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
            owner.inFlight.wrappingSubtract(1, ordering: .acquiringAndReleasing)
        }

        deinit { release() }
    }
}
