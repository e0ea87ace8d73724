import Foundation
import StrataCore
import StrataRemote
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

/// `RemoteBlobStore` against a real Strata server over loopback gRPC.
@Suite struct RemoteBlobStoreTests {
    /// Runs `body` with a remote store whose server keeps its blobs in `backing` under instance "main".
    func withRemote(
        backing: any BlobStore = LRUBlobStore(capacityBytes: 256 << 20), options: RemoteBlobStore.Options = {
            var options = RemoteBlobStore.Options()
            options.channel.instanceName = "main"
            return options
        }(),
        _ body: @Sendable (RemoteBlobStore, any BlobStore) async throws -> Void
    ) async throws {
        let instance = Instance(name: "main", cas: .init(store: backing, readOnly: false), byteStream: .init(store: backing, readOnly: false))
        try await withServer([instance]) { clients in
            let remote = try RemoteBlobStore(url: "grpc://127.0.0.1:\(clients.port)", options: options)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await remote.channel.run() }
                defer { remote.channel.shutdown() }
                try await body(remote, backing)
            }
        }
    }

    static let cases = BlobStoreConformance.cases.filter { $0.name != "delete" }

    @Test(arguments: cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await withRemote { remote, _ in try await check.run(on: remote) }
    }

    @Test func bytesLandInTheRemoteInstance() async throws {
        try await withRemote { remote, backing in
            let small = Blob.random(size: 1000), large = Blob.random(size: 5 << 20)
            try await remote.write(small.digest, data: small.data)
            try await remote.write(large.digest, body: BlobBody(data: large.data, chunkSize: 300_000))
            #expect(try await backing.readAll(small.digest) == small.data)
            #expect(try await backing.readAll(large.digest) == large.data)
            // A ranged read across the remote's chunk boundaries.
            let middle = try await remote.read(large.digest, offset: 2_000_000, limit: 3_000_000).collect(limit: 3_000_000)
            #expect(middle == large.data[2_000_000..<5_000_000])
        }
    }

    @Test func deleteIsUnimplementedAndSaysWhy() async throws {
        try await withRemote { remote, _ in
            try await expectError(.unimplemented, "deleting through the REAPI") { try await remote.delete([Blob.random(size: 1).digest]) }
        }
    }

    @Test func unknownInstanceIsTheRemotesError() async throws {
        var options = RemoteBlobStore.Options()
        options.channel.instanceName = "nope"
        try await withRemote(options: options) { remote, _ in
            try await expectError(.invalidArgument, "using an instance the remote does not have") {
                _ = try await remote.findMissing([Blob.random(size: 1).digest])
            }
        }
    }

    @Test func unreachableServerIsUnavailableAfterRetries() async throws {
        var options = RemoteBlobStore.Options()
        options.channel.retries = 2
        options.channel.maxBackoff = .milliseconds(50)
        // Port 1 on loopback: nothing listens there.
        let remote = try RemoteBlobStore(url: "127.0.0.1:1", options: options)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await remote.channel.run() }
            defer { remote.channel.shutdown() }
            let start = ContinuousClock.now
            try await expectError(.unavailable, "FindMissingBlobs against a closed port") {
                _ = try await remote.findMissing([Blob.random(size: 1).digest])
            }
            #expect(ContinuousClock.now - start < .seconds(30))
        }
    }

    /// Only UNAVAILABLE is retried: "blob too large" (RESOURCE_EXHAUSTED) and the like would fail the
    /// same way again, and used to be sent `retries` more times.
    @Test(arguments: [
        (StrataError.resourceExhausted("blob too large"), 1), (.invalidArgument("bad digest"), 1),
        (.notFound("no such blob"), 1), (.init(.permissionDenied, "read-only"), 1), (.unavailable("down"), 3),
    ])
    func onlyUnavailableIsRetried(_ failure: StrataError, _ expectedCalls: Int) async throws {
        let backing = FaultyBlobStore(LRUBlobStore(capacityBytes: 1 << 20))
        backing.failure = failure
        backing.failing = true
        var options = RemoteBlobStore.Options()
        options.channel.instanceName = "main"
        options.channel.retries = 2
        options.channel.maxBackoff = .milliseconds(50)
        try await withRemote(backing: backing, options: options) { remote, _ in
            try await expectError(failure.code, "FindMissingBlobs answered \(failure.code)") {
                _ = try await remote.findMissing([Blob.random(size: 10).digest])
            }
        }
        #expect(backing.calls("findMissing") == expectedCalls, "\(failure.code): \(backing.calls("findMissing")) calls")
    }

    /// A remote that accepts connections and answers nothing: calls are UNAVAILABLE at the call
    /// timeout (or the client's deadline, when sooner), and once the remote answers again calls
    /// succeed on a new connection, instead of timing out on the silent one for good (as they did:
    /// HTTP/2 kept sending every call into it).
    @Test(.timeLimit(.minutes(2)))
    func hungRemoteIsUnavailableAndTheChannelRecovers() async throws {
        let backing = LRUBlobStore(capacityBytes: 1 << 20)
        let instance = Instance(name: "main", cas: .init(store: backing, readOnly: false), byteStream: .init(store: backing, readOnly: false))
        try await withServer([instance]) { clients in
            let proxy = try FaultProxy(targetPort: clients.port)
            defer { proxy.stop() }
            var options = RemoteBlobStore.Options()
            options.channel.instanceName = "main"
            options.channel.requestTimeout = .seconds(5)
            let remote = try RemoteBlobStore(url: "grpc://127.0.0.1:\(proxy.port)", options: options)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await remote.channel.run() }
                defer { remote.channel.shutdown() }
                let blob = Blob.random(size: 1000)
                try await remote.write(blob.digest, data: blob.data)
                #expect(try await remote.findMissing([blob.digest]).isEmpty)

                proxy.hang()
                var start = ContinuousClock.now
                try await expectError(.unavailable, "FindMissingBlobs on a hung remote") {
                    _ = try await remote.findMissing([blob.digest])
                }
                // A liveness bound: the 5 s call timeout, not retried; it used to wait for ever.
                #expect(ContinuousClock.now - start < .seconds(30))
                start = ContinuousClock.now
                try await expectError(.unavailable, "a read on a hung remote with a 1 s deadline") {
                    try await RequestDeadline.withDeadline(.now + .seconds(1)) { _ = try await remote.readAll(blob.digest) }
                }
                #expect(ContinuousClock.now - start < .seconds(4), "a 1 s deadline took \(ContinuousClock.now - start)")

                proxy.forward()
                // A connection opened during the hang (by the replacement of the first silent one) is
                // silent too, and grpc-swift has no bound on connection set-up: at most one more call
                // times out and replaces it; every call after that succeeds.
                var failures = 0
                for _ in 0..<4 {
                    do {
                        #expect(try await remote.findMissing([blob.digest]).isEmpty)
                    } catch {
                        failures += 1
                    }
                }
                #expect(failures <= 1, "\(failures) calls failed after the remote recovered")
                #expect(try await remote.readAll(blob.digest) == blob.data)
                // The silent connections end with the proxy (a graceful shutdown waits for them).
                proxy.stop()
            }
        }
    }

    /// TLS is the client layer's (RemoteClientTests); a URL it cannot use is refused before connecting.
    @Test func refusesBadURLs() {
        #expect(throws: StrataError.self) { try RemoteBlobStore(url: "ftp://example:443") }
        #expect(throws: StrataError.self) { try RemoteBlobStore(url: "grpc://example:0") }
        #expect(throws: StrataError.self) { try RemoteBlobStore(url: "grpc://example:1/path") }
    }
}
