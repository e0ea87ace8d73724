import Foundation
import GRPCCore
import StrataAPI
import StrataConfig
import StrataCore
import StrataSQL
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

/// config/tiered.yml, the cache-only deployment (sharded, Redis-indexed, small blobs in PostgreSQL,
/// large ones in S3), served end to end against the real services.
@Suite(.enabled(if: TestServices.available("STRATA_TEST_REDIS") && TestServices.available("STRATA_TEST_POSTGRES")
                && TestServices.available("STRATA_TEST_S3")))
struct TieredConfigTests {
    static let file: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.appendingPathComponent("config/tiered.yml").path
    }()

    /// The environment config/tiered.yml reads, pointing at the test services.
    static func environment() throws -> [String: String] {
        guard let redis = TestServices.redis else { throw MissingServiceError("STRATA_TEST_REDIS") }
        guard let postgres = TestServices.postgres else { throw MissingServiceError("STRATA_TEST_POSTGRES") }
        guard let s3 = TestServices.s3 else { throw MissingServiceError("STRATA_TEST_S3") }
        let (host, port) = (redis.split(separator: ":").first.map(String.init) ?? "", redis.split(separator: ":").last.map(String.init) ?? "")
        return [
            "STRATA_ADDRESS": "127.0.0.1:0",
            "STRATA_REDIS_HOST": host, "STRATA_REDIS_PORT": port,
            "STRATA_POSTGRES_URL": postgres.replacingOccurrences(of: "postgres://", with: "postgresql://"),
            "STRATA_S3_ENDPOINT": s3.endpoint, "STRATA_S3_BUCKET": "strata-tiered",
            "AWS_ACCESS_KEY_ID": s3.accessKey, "AWS_SECRET_ACCESS_KEY": s3.secretKey,
        ]
    }

    /// Runs `body` with the configuration loaded and its connection pools running.
    static func withConfiguration(_ body: @Sendable (Configuration) async throws -> Void) async throws {
        let configuration = try Configuration.load(file: Self.file, environment: try Self.environment())
        try await withThrowingTaskGroup(of: Void.self) { group in
            for service in configuration.backgroundServices {
                group.addTask { try await service.run() }
            }
            defer { group.cancelAll() }
            // As an operator would (`strata migrate` before serving); retried, because on a loaded
            // 2-core machine the first connection to a busy database can miss the pool timeout.
            for connection in configuration.sqlConnections {
                for attempt in 1...3 {
                    do {
                        try await connection.migrate()
                        break
                    } catch let error as StrataError where error.code == .unavailable && attempt < 3 {}
                }
            }
            try await body(configuration)
        }
    }

    /// The whole composition (sharded → Redis index → size-differentiated → PostgreSQL / S3) honours
    /// the same contract as every single backend. One configuration runs every case, as one server
    /// would (a configuration per case would open a connection pool per case).
    @Test func conformance() async throws {
        try await Self.withConfiguration { configuration in
            let store = try #require(configuration.instances.first?.cas?.store)
            #expect(store is ShardedBlobStore)
            for check in BlobStoreConformance.cases {
                do {
                    try await check.run(on: store)
                } catch {
                    Issue.record("\(check.name): \(error)")
                }
            }
        }
    }

    @Test func servesREAPIThroughEveryTier() async throws {
        try await Self.withConfiguration { configuration in
            try await withServer(configuration.instances) { clients in
                // Small blobs (to PostgreSQL) in a batch, a large one (to S3) through ByteStream.
                let small = (0..<20).map { _ in Blob.random(size: 4096) }
                let large = Blob.random(size: 3 << 20)
                let missing = try await clients.cas.findMissingBlobs(.with {
                    $0.blobDigests = (small + [large]).map(\.digest.proto)
                })
                #expect(missing.missingBlobDigests.count == 21)
                let update = try await clients.cas.batchUpdateBlobs(.with {
                    $0.requests = small.map { blob in .with { $0.digest = blob.digest.proto; $0.data = blob.data } }
                })
                #expect(update.responses.allSatisfy { $0.status.code == 0 })
                let resource = "uploads/\(UUID())/blobs/\(large.digest.hash)/\(large.digest.sizeBytes)"
                let written = try await clients.byteStream.write(requestProducer: { writer in
                    var offset = 0
                    while offset < large.data.count {
                        let end = min(offset + (1 << 20), large.data.count)
                        try await writer.write(.with {
                            $0.resourceName = offset == 0 ? resource : ""
                            $0.writeOffset = Int64(offset)
                            $0.data = large.data[offset..<end]
                            $0.finishWrite = end == large.data.count
                        })
                        offset = end
                    }
                })
                #expect(written.committedSize == large.digest.sizeBytes)
                #expect(try await clients.cas.findMissingBlobs(.with {
                    $0.blobDigests = (small + [large]).map(\.digest.proto)
                }).missingBlobDigests.isEmpty)
                let read = try await clients.cas.batchReadBlobs(.with { $0.digests = small.map(\.digest.proto) })
                #expect(read.responses.map(\.data) == small.map(\.data))
                let received = try await clients.byteStream.read(.with {
                    $0.resourceName = "blobs/\(large.digest.hash)/\(large.digest.sizeBytes)"
                }) { response in
                    var data = Data()
                    for try await message in response.messages { data.append(message.data) }
                    return data
                }
                #expect(received == large.data)

                // An action result whose outputs are in the tiers is served; the completeness check
                // reads the index.
                let action = Blob.random(size: 100).digest
                let result = Build_Bazel_Remote_Execution_V2_ActionResult.with {
                    $0.outputFiles = [
                        .with { $0.path = "out/small"; $0.digest = small[0].digest.proto },
                        .with { $0.path = "out/large"; $0.digest = large.digest.proto },
                    ]
                }
                _ = try await clients.actionCache.updateActionResult(.with { $0.actionDigest = action.proto; $0.actionResult = result })
                #expect(try await clients.actionCache.getActionResult(.with { $0.actionDigest = action.proto }) == result)
            }
        }
    }
}
