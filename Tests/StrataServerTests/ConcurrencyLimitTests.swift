import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// An LRU store whose FindMissingBlobs calls wait, once they are inside, until the gate opens: RPCs
/// held in flight for as long as a test needs.
private final class GatedStore: BlobStore {
    let base = LRUBlobStore(capacityBytes: 256 << 20)
    private let entered = AsyncStream<Void>.makeStream()
    private let gate = Mutex<[CheckedContinuation<Void, Never>]?>([])

    func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        entered.continuation.yield()
        await withCheckedContinuation { continuation in
            let open = gate.withLock { waiting in
                guard waiting != nil else { return true }
                waiting!.append(continuation)
                return false
            }
            if open { continuation.resume() }
        }
        return try await base.findMissing(digests)
    }

    /// Returns once `count` calls have entered FindMissingBlobs.
    func waitForCalls(_ count: Int) async {
        var iterator = entered.stream.makeAsyncIterator()
        for _ in 0..<count { _ = await iterator.next() }
    }

    func open() {
        for continuation in gate.withLock({ waiting in defer { waiting = nil }; return waiting ?? [] }) { continuation.resume() }
    }

    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await base.read(digest, offset: offset, limit: limit)
    }
    func write(_ digest: Digest, body: BlobBody) async throws { try await base.write(digest, body: body) }
    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }
}

private func withLimitedServer(
    _ limits: [ConcurrencyLimit], store: GatedStore,
    _ body: @Sendable (_ cas: CASClient, _ byteStream: ByteStreamClient) async throws -> Void
) async throws {
    let address = ListenAddress(.tcp(host: "127.0.0.1", port: 0))
    let instance = Instance(name: "", cas: .init(store: store), byteStream: .init(store: store), actionCache: nil)
    let server = try StrataServer(
        registry: InstanceRegistry([instance]), addresses: [address], eventLoops: 2, concurrencyLimits: limits)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        guard case .tcp(_, let port) = try await server.listeningAddresses()[0].kind else { fatalError("tcp expected") }
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
        try await withGRPCClient(transport: transport) { client in
            try await body(CASClient(wrapping: client), ByteStreamClient(wrapping: client))
        }
        server.beginGracefulShutdown()
        try await group.waitForAll()
    }
}

/// A deadline far beyond any answer: a call refused "at once" must not run into it.
private let generous: CallOptions = {
    var options = CallOptions.defaults
    options.timeout = .seconds(60)
    return options
}()

@Suite struct ConcurrencyLimitTests {
    /// With N RPCs in flight, the next gets RESOURCE_EXHAUSTED naming the limit (not a wait: its deadline
    /// is a minute away); once they end, calls are served again.
    @Test func rpcPastTheLimitIsRefusedAtOnce() async throws {
        let store = GatedStore()
        let limit = ConcurrencyLimit(name: "maximum-concurrent-rpcs", maxInFlight: 2)
        try await withLimitedServer([limit], store: store) { cas, _ in
            try await withThrowingTaskGroup(of: Void.self) { held in
                for _ in 0..<2 {
                    held.addTask { _ = try await cas.findMissingBlobs(.with { $0.blobDigests = [] }, options: generous) }
                }
                await store.waitForCalls(2)
                let refused = await rpcFailure {
                    _ = try await cas.findMissingBlobs(.with { $0.blobDigests = [] }, options: generous)
                }
                #expect(refused?.code == .resourceExhausted)
                #expect(refused?.message.contains("maximum-concurrent-rpcs") == true, "\(refused?.message ?? "")")
                #expect(refused?.message.contains("2") == true)
                store.open()
                try await held.waitForAll()
            }
            _ = try await cas.findMissingBlobs(.with { $0.blobDigests = [] }, options: generous)
            _ = try await cas.findMissingBlobs(.with { $0.blobDigests = [] }, options: generous)
        }
    }

    /// A ByteStream Read counts until its streamed response ends, not only while its handler runs.
    @Test func streamedResponseCountsUntilItEnds() async throws {
        let store = GatedStore()
        store.open()
        let blob = Blob.random(size: 64 << 20)
        try await store.base.write(blob.digest, data: blob.data)
        let limit = ConcurrencyLimit(name: "limiter.concurrent-request-limit", maxInFlight: 1)
        try await withLimitedServer([limit], store: store) { cas, byteStream in
            let request = Google_Bytestream_ReadRequest.with { $0.resourceName = "blobs/\(blob.digest)" }
            let received = try await byteStream.read(request, options: generous) { response in
                var messages = response.messages.makeAsyncIterator()
                var received = try await messages.next()?.data.count ?? 0
                // One message read and 63 MiB still to come: the Read is in flight.
                let refused = await rpcFailure {
                    _ = try await cas.findMissingBlobs(.with { $0.blobDigests = [] }, options: generous)
                }
                #expect(refused?.code == .resourceExhausted)
                #expect(refused?.message.contains("limiter.concurrent-request-limit") == true, "\(refused?.message ?? "")")
                while let message = try await messages.next() { received += message.data.count }
                return received
            }
            #expect(received == blob.data.count)
            // The Read's place is given back as its last message goes out; the client may see the end
            // just before: bounded retries.
            var served = false
            for _ in 0..<100 where !served {
                served = await rpcFailure { _ = try await cas.findMissingBlobs(.with { $0.blobDigests = [] }, options: generous) } == nil
                if !served { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(served)
        }
    }
}
