import Foundation
import Glibc
import GRPCCore
import GRPCNIOTransportHTTP2
import StrataAPI
import StrataActionCache
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct ByteStreamServiceTests {
    @Test func writesAndReadsLargeBlobInChunks() async throws {
        try await withServer([memoryInstance("main")]) { clients in
            let blob = Blob.random(size: 5 << 20 + 123)
            let committed = try await clients.byteStream.upload("main/uploads/\(UUID())/blobs/\(blob.digest)/meta", blob.data, chunkSize: 16 << 10)
            #expect(committed == blob.digest.sizeBytes)
            let read = try await clients.byteStream.download("main/blobs/\(blob.digest)")
            #expect(read == blob.data)
            let slice = try await clients.byteStream.download("main/blobs/\(blob.digest)", offset: 1000, limit: 5000)
            #expect(slice == blob.data[1000..<6000])
            let tail = try await clients.byteStream.download("main/blobs/\(blob.digest)", offset: blob.digest.sizeBytes)
            #expect(tail.isEmpty)
        }
    }

    @Test func readErrorsUseTheSpecsCodes() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = Blob.random(size: 100)
            _ = try await clients.byteStream.upload("uploads/u/blobs/\(blob.digest)", blob.data)
            let cases: [(String, Int64, Int64, RPCError.Code)] = [
                ("blobs/\(blob.digest)", 101, 0, .outOfRange),
                ("blobs/\(blob.digest)", -1, 0, .outOfRange),
                ("blobs/\(blob.digest)", 0, -1, .invalidArgument),
                ("blobs/\(Blob.random(size: 100).digest)", 0, 0, .notFound),
                ("blobs/\(blob.digest.hash)/99", 0, 0, .notFound),
                ("blobs/nothex/100", 0, 0, .invalidArgument),
                ("blobs/\(blob.digest.hash)", 0, 0, .invalidArgument),
                ("other/blobs/\(blob.digest)", 0, 0, .invalidArgument),
                ("compressed-blobs/zstd/\(blob.digest)", 0, 1, .invalidArgument),
                ("compressed-blobs/gzip/\(blob.digest)", 0, 0, .invalidArgument),
            ]
            for (resource, offset, limit, code) in cases {
                let failure = await rpcFailure { _ = try await clients.byteStream.download(resource, offset: offset, limit: limit) }
                #expect(failure?.code == code, "\(resource) offset \(offset) limit \(limit): \(String(describing: failure))")
                #expect(failure?.message.isEmpty == false)
            }
        }
    }

    @Test func writeErrorsStoreNothing() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = Blob.random(size: 200_000)
            var corrupt = blob.data
            corrupt[5] ^= 1
            let cases: [(String, Data, String)] = [
                ("too few bytes", blob.data.prefix(100_000), "finish_write after 100000 bytes"),
                ("too many bytes", blob.data + Data([1]), "200001 bytes"),
                ("wrong hash", corrupt, "hash"),
            ]
            for (what, data, message) in cases {
                let failure = await rpcFailure { _ = try await clients.byteStream.upload("uploads/\(UUID())/blobs/\(blob.digest)", data) }
                #expect(failure?.code == .invalidArgument, "\(what): \(String(describing: failure))")
                #expect(failure?.message.contains(message) == true, "\(what): \(String(describing: failure))")
            }
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [blob.digest.proto] })
            #expect(missing.missingBlobDigests.count == 1)
            let badName = await rpcFailure { _ = try await clients.byteStream.upload("blobs/\(blob.digest)", blob.data) }
            #expect(badName?.code == .invalidArgument)
            let badOffset = await rpcFailure { _ = try await clients.byteStream.upload("uploads/x/blobs/\(blob.digest)", blob.data, offset: 10) }
            #expect(badOffset?.code == .invalidArgument)
            #expect(clients.server.uploads.count == 0)
        }
    }

    @Test func refusesBlobsOverTheMaximumSize() async throws {
        try await withServer([memoryInstance(capacity: 1000)]) { clients in
            let blob = Blob.random(size: 1001)
            let failure = await rpcFailure { _ = try await clients.byteStream.upload("uploads/u/blobs/\(blob.digest)", blob.data) }
            #expect(failure?.code == .invalidArgument)
            #expect(failure?.message.contains("max_cas_blob_size_bytes") == true)
        }
    }

    @Test func existingBlobCompletesEarly() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = Blob.random(size: 3 << 20)
            _ = try await clients.byteStream.upload("uploads/a/blobs/\(blob.digest)", blob.data)
            let committed = try await clients.byteStream.write(requestProducer: { writer in
                try await writer.write(.with {
                    $0.resourceName = "uploads/b/blobs/\(blob.digest)"
                    $0.data = blob.data.prefix(1000)
                })
            }).committedSize
            #expect(committed == blob.digest.sizeBytes)
        }
    }

    @Test func resumesAnInterruptedUpload() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = Blob.random(size: 1 << 20)
            let resource = "uploads/\(UUID())/blobs/\(blob.digest)"
            let unknown = await rpcFailure { _ = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = resource }) }
            #expect(unknown?.code == .notFound)

            // The client closes its stream after half the bytes, without finish_write.
            let half = try await clients.byteStream.upload(resource, blob.data.prefix(512 << 10), finish: false)
            #expect(half == 512 << 10)
            let status = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = resource })
            #expect(status.committedSize == 512 << 10 && !status.complete)

            let wrongOffset = await rpcFailure { _ = try await clients.byteStream.upload(resource, blob.data.suffix(1000), offset: 1000) }
            #expect(wrongOffset?.code == .invalidArgument)
            #expect(wrongOffset?.message.contains("resume at \(512 << 10)") == true)

            let done = try await clients.byteStream.upload(resource, blob.data.suffix(from: 512 << 10), offset: 512 << 10)
            #expect(done == blob.digest.sizeBytes)
            let complete = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = resource })
            #expect(complete.complete && complete.committedSize == blob.digest.sizeBytes)
            #expect(try await clients.byteStream.download("blobs/\(blob.digest)") == blob.data)
        }
    }

    /// A parked BLAKE3 upload is that function's: the SHA-256 name with the same upload id and hex
    /// neither sees nor resumes it, and the BLAKE3 blob completes under its own name.
    @Test func parkedUploadsAreKeptPerDigestFunction() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = Blob.random(size: 200_000, function: .blake3)
            let id = UUID()
            let blake3 = "uploads/\(id)/blobs/blake3/\(blob.digest)"
            let sameHexSHA256 = "uploads/\(id)/blobs/\(blob.digest)"
            _ = try await clients.byteStream.upload(blake3, blob.data.prefix(100_000), finish: false)
            let status = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = blake3 })
            #expect(status.committedSize == 100_000)
            let other = await rpcFailure { _ = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = sameHexSHA256 }) }
            #expect(other?.code == .notFound)
            let resumedAsSHA256 = await rpcFailure {
                _ = try await clients.byteStream.upload(sameHexSHA256, blob.data.suffix(from: 100_000), offset: 100_000)
            }
            #expect(resumedAsSHA256?.code == .invalidArgument)
            let done = try await clients.byteStream.upload(blake3, blob.data.suffix(from: 100_000), offset: 100_000)
            #expect(done == blob.digest.sizeBytes)
            #expect(try await clients.byteStream.download("blobs/blake3/\(blob.digest)") == blob.data)
            let absent = await rpcFailure { _ = try await clients.byteStream.download("blobs/\(blob.digest)") }
            #expect(absent?.code == .notFound)
        }
    }

    @Test func idleParkedUploadsExpire() async throws {
        let uploads = UploadRegistry(idleTimeout: .milliseconds(1))
        try await withServer([memoryInstance()], uploads: uploads) { clients in
            let blob = Blob.random(size: 100_000)
            let resource = "uploads/\(UUID())/blobs/\(blob.digest)"
            _ = try await clients.byteStream.upload(resource, blob.data.prefix(50_000), finish: false)
            // The server's expiry loop runs at least every idle timeout; sweep once more to be sure.
            try await Task.sleep(for: .milliseconds(50))
            uploads.expireIdle()
            #expect(uploads.count == 0)
            let gone = await rpcFailure { _ = try await clients.byteStream.queryWriteStatus(.with { $0.resourceName = resource }) }
            #expect(gone?.code == .notFound)
        }
    }

    @Test func concurrentUploadsOfOneBlob() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = Blob.random(size: 2 << 20)
            try await withThrowingTaskGroup(of: Int64.self) { group in
                for _ in 0..<6 {
                    group.addTask { try await clients.byteStream.upload("uploads/\(UUID())/blobs/\(blob.digest)", blob.data) }
                }
                for try await committed in group { #expect(committed == blob.digest.sizeBytes) }
            }
            #expect(try await clients.byteStream.download("blobs/\(blob.digest)") == blob.data)
        }
    }
}

@Suite struct ActionCacheServiceTests {
    typealias Result = Build_Bazel_Remote_Execution_V2_ActionResult

    @Test func updateThenGet() async throws {
        try await withServer([memoryInstance()]) { clients in
            let action = Blob.random(size: 140).digest
            let output = Blob.random(size: 10).digest
            let result = Result.with {
                $0.exitCode = 0
                $0.outputFiles = [.with { $0.path = "out/a"; $0.digest = output.proto }]
            }
            let missing = await rpcFailure { _ = try await clients.actionCache.getActionResult(.with { $0.actionDigest = action.proto }) }
            #expect(missing?.code == .notFound)
            let stored = try await clients.actionCache.updateActionResult(.with {
                $0.actionDigest = action.proto
                $0.actionResult = result
            })
            #expect(stored == result)
            #expect(try await clients.actionCache.getActionResult(.with { $0.actionDigest = action.proto }) == result)

            let badAction = await rpcFailure {
                _ = try await clients.actionCache.updateActionResult(.with { $0.actionDigest = protoDigest("12", 3); $0.actionResult = result })
            }
            #expect(badAction?.code == .invalidArgument)
            let badOutput = await rpcFailure {
                _ = try await clients.actionCache.updateActionResult(.with {
                    $0.actionDigest = action.proto
                    $0.actionResult = .with { $0.outputFiles = [.with { $0.path = "x"; $0.digest = protoDigest(output.hash, -1) }] }
                })
            }
            #expect(badOutput?.code == .invalidArgument)
            #expect(badOutput?.message.contains("output file x") == true)
        }
    }

    @Test func readOnlyCacheRefusesUpdatesAndSaysSo() async throws {
        let cache = UpdatePolicyActionCache(LRUActionCache(maxEntries: 10), allowUpdates: false, cacheFailedActions: true)
        try await withServer([memoryInstance(cache: cache)]) { clients in
            let capabilities = try await clients.capabilities.getCapabilities(.with { _ in })
            #expect(!capabilities.cacheCapabilities.actionCacheUpdateCapabilities.updateEnabled)
            let refused = await rpcFailure {
                _ = try await clients.actionCache.updateActionResult(.with {
                    $0.actionDigest = Blob.random(size: 1).digest.proto
                    $0.actionResult = .with { $0.exitCode = 0 }
                })
            }
            #expect(refused?.code == .permissionDenied)
        }
    }
}

@Suite struct ServerLifecycleTests {
    /// Listeners share their port through SO_REUSEPORT, which must not let a second server take a
    /// share of the first one's connections.
    @Test func secondServerOnTheSamePortFails() async throws {
        _ = try await withServer([memoryInstance()]) { clients in
            _ = try await clients.capabilities.getCapabilities(.init())
            #expect {
                _ = try StrataServer(
                    registry: InstanceRegistry([memoryInstance()]), addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: clients.port))])
            } throws: { ($0 as? StrataError)?.message.contains("in use") == true }
        }
    }

    /// A start-up that fails on its second address leaves the first one's port free again.
    @Test func failedStartReleasesEarlierAddresses() async throws {
        _ = try await withServer([memoryInstance()]) { clients in
            _ = try await clients.capabilities.getCapabilities(.init())
            let free = try freePort()
            let addresses = [ListenAddress(.tcp(host: "127.0.0.1", port: free)), ListenAddress(.tcp(host: "127.0.0.1", port: clients.port))]
            #expect(throws: StrataError.self) { _ = try StrataServer(registry: InstanceRegistry([memoryInstance()]), addresses: addresses) }
            // Had the first address's sockets stayed open, this would find the port in use.
            _ = try StrataServer(registry: InstanceRegistry([memoryInstance()]), addresses: [addresses[0]])
        }
    }

    /// One listener per event loop on one address: connections spread over them, every one answers,
    /// and the address is reported once.
    @Test func everyListenerOfAnAddressServes() async throws {
        let registry = InstanceRegistry([memoryInstance()])
        let server = try StrataServer(registry: registry, addresses: [ListenAddress(.tcp(host: "127.0.0.1", port: 0))], eventLoops: 3)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            let addresses = try await server.listeningAddresses()
            #expect(addresses.count == 1)
            guard case .tcp(_, let port) = addresses[0].kind else { fatalError("tcp expected") }
            let blob = Blob.random(size: 1000)
            // Separate connections land on the listeners as the kernel hashes them; all see one store.
            for index in 0..<12 {
                let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
                try await withGRPCClient(transport: transport) { client in
                    let cas = CASClient(wrapping: client)
                    if index == 0 {
                        _ = try await cas.batchUpdateBlobs(.with { $0.requests = [.with { $0.digest = blob.digest.proto; $0.data = blob.data }] })
                    }
                    let missing = try await cas.findMissingBlobs(.with { $0.blobDigests = [blob.digest.proto] })
                    #expect(missing.missingBlobDigests.isEmpty)
                }
            }
            server.beginGracefulShutdown()
            try await group.waitForAll()
        }
    }

    @Test func gracefulShutdownLetsAnUploadInFlightFinish() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blob = Blob.random(size: 1 << 20)
            let committed = try await clients.byteStream.write(requestProducer: { writer in
                try await writer.write(.with {
                    $0.resourceName = "uploads/g/blobs/\(blob.digest)"
                    $0.data = blob.data.prefix(1000)
                })
                // Shut down once the server holds the upload: the RPC is in flight, not merely sent.
                while clients.server.uploads.count == 0 { try await Task.sleep(for: .milliseconds(5)) }
                clients.server.beginGracefulShutdown()
                try await Task.sleep(for: .milliseconds(50))
                try await writer.write(.with {
                    $0.writeOffset = 1000
                    $0.data = blob.data.suffix(from: 1000)
                    $0.finishWrite = true
                })
            }).committedSize
            #expect(committed == blob.digest.sizeBytes)
        }
    }
}

/// A loopback port nothing listens on: bound to port 0 and closed again.
func freePort() throws -> Int {
    let socket = Glibc.socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
    defer { close(socket) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, length) == 0 && getsockname(socket, $0, &length) == 0 }
    }
    guard bound else { throw StrataError.unavailable("no free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}
