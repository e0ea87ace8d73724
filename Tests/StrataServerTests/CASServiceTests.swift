import Foundation
import GRPCCore
import StrataAPI
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct CapabilitiesTests {
    @Test func advertisesWhatIsEnforced() async throws {
        try await withServer([memoryInstance(capacity: 64 << 20)], maxBatchTotalSizeBytes: 1 << 20) { clients in
            let capabilities = try await clients.capabilities.getCapabilities(.with { $0.instanceName = "" })
            #expect(capabilities.lowApiVersion.major == 2 && capabilities.lowApiVersion.minor == 0)
            #expect(capabilities.highApiVersion.major == 2 && capabilities.highApiVersion.minor == 12)
            let cache = capabilities.cacheCapabilities
            #expect(cache.digestFunctions == [.sha256, .sha1, .sha384, .sha512, .blake3])
            #expect(cache.maxBatchTotalSizeBytes == 1 << 20)
            #expect(cache.maxCasBlobSizeBytes == 64 << 20)
            #expect(cache.actionCacheUpdateCapabilities.updateEnabled)
            #expect(!capabilities.hasExecutionCapabilities)
            let unknown = await rpcFailure { _ = try await clients.capabilities.getCapabilities(.with { $0.instanceName = "nope" }) }
            #expect(unknown?.code == .invalidArgument)
            #expect(unknown?.message.contains("nope") == true)
        }
    }
}

@Suite struct CASServiceTests {
    @Test func findMissingBlobs() async throws {
        try await withServer([memoryInstance(), Instance(name: "no-cas")]) { clients in
            let present = Blob.random(size: 100)
            let absent = Blob.random(size: 100)
            let stored = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [.with { $0.digest = present.digest.proto; $0.data = present.data }]
            })
            #expect(stored.responses[0].status.code == 0)
            let missing = try await clients.cas.findMissingBlobs(.with {
                $0.blobDigests = [present.digest.proto, absent.digest.proto, Digest.emptySHA256.proto]
            })
            #expect(missing.missingBlobDigests == [absent.digest.proto])

            let bad: [(ProtoDigest, String)] = [
                (protoDigest("abc", 1), "64 hex characters"),
                (protoDigest(present.digest.hash.uppercased(), 100), "lower-case"),
                (protoDigest(present.digest.hash, -5), "negative"),
            ]
            for (digest, message) in bad {
                let failure = await rpcFailure { _ = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [digest] }) }
                #expect(failure?.code == .invalidArgument)
                #expect(failure?.message.contains(message) == true, "\(String(describing: failure))")
            }
            let sha1 = await rpcFailure {
                _ = try await clients.cas.findMissingBlobs(.with {
                    $0.blobDigests = [present.digest.proto]
                    $0.digestFunction = .sha1
                })
            }
            #expect(sha1?.code == .invalidArgument)
            let unknown = await rpcFailure { _ = try await clients.cas.findMissingBlobs(.with { $0.instanceName = "other" }) }
            #expect(unknown?.code == .invalidArgument)
            let noCAS = await rpcFailure { _ = try await clients.cas.findMissingBlobs(.with { $0.instanceName = "no-cas" }) }
            #expect(noCAS?.code == .unimplemented)
        }
    }

    @Test func batchUpdateGivesEachBlobItsStatus() async throws {
        try await withServer([memoryInstance()]) { clients in
            let good = Blob.random(size: 1000)
            let mismatch = Blob.random(size: 1000)
            let response = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [
                    .with { $0.digest = good.digest.proto; $0.data = good.data },
                    .with { $0.digest = mismatch.digest.proto; $0.data = Data(repeating: 1, count: 1000) },
                    .with { $0.digest = protoDigest(good.digest.hash, 999); $0.data = good.data },
                    .with { $0.digest = protoDigest("zz", 2); $0.data = Data([1, 2]) },
                ]
            })
            let codes = response.responses.map(\.status.code)
            #expect(codes == [0, 3, 3, 3])
            #expect(response.responses[1].status.message.contains("hash"))
            let missing = try await clients.cas.findMissingBlobs(.with {
                $0.blobDigests = [good.digest.proto, mismatch.digest.proto, protoDigest(good.digest.hash, 999)]
            })
            #expect(missing.missingBlobDigests == [mismatch.digest.proto, protoDigest(good.digest.hash, 999)])
        }
    }

    /// A batch large enough to be stored from Swift's pool and hashed in parts on a multi-core machine
    /// (900 × 4 KiB) answers each blob as a small one does, in order, and stores exactly the good ones;
    /// a small batch on the same connection afterwards is served as before.
    @Test func largeBatchUpdateGivesEachBlobItsStatus() async throws {
        try await withServer([memoryInstance()]) { clients in
            let blobs = (0..<900).map { _ in Blob.random(size: 4096) }
            let bad: Set<Int> = [0, 450, 899]
            let response = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = blobs.enumerated().map { index, blob in
                    .with { $0.digest = blob.digest.proto; $0.data = bad.contains(index) ? Data(repeating: 7, count: 4096) : blob.data }
                }
            })
            #expect(response.responses.map(\.digest) == blobs.map(\.digest.proto))
            #expect(response.responses.indices.filter { response.responses[$0].status.code != 0 } == bad.sorted())
            let missing = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = blobs.map(\.digest.proto) })
            #expect(missing.missingBlobDigests == bad.sorted().map { blobs[$0].digest.proto })
            let small = Blob.random(size: 100)
            let answer = try await clients.cas.batchUpdateBlobs(.with { $0.requests = [.with { $0.digest = small.digest.proto; $0.data = small.data }] })
            #expect(answer.responses.map(\.status.code) == [0])
        }
    }

    @Test func batchLimitsAreEnforced() async throws {
        try await withServer([memoryInstance()], maxBatchTotalSizeBytes: 10_000) { clients in
            let blobs = (0..<3).map { _ in Blob.random(size: 4000) }
            let update = await rpcFailure {
                _ = try await clients.cas.batchUpdateBlobs(.with {
                    $0.requests = blobs.map { blob in .with { $0.digest = blob.digest.proto; $0.data = blob.data } }
                })
            }
            #expect(update?.code == .invalidArgument)
            #expect(update?.message.contains("max_batch_total_size_bytes") == true)
            let read = await rpcFailure {
                _ = try await clients.cas.batchReadBlobs(.with { $0.digests = blobs.map(\.digest.proto) })
            }
            #expect(read?.code == .invalidArgument)
            // Sizes whose sum overflows Int64 are over the limit too, not a crash.
            let huge = await rpcFailure {
                _ = try await clients.cas.batchReadBlobs(.with {
                    $0.digests = [.with { $0.hash = blobs[0].digest.hash; $0.sizeBytes = .max },
                                  .with { $0.hash = blobs[1].digest.hash; $0.sizeBytes = 1 }]
                })
            }
            #expect(huge?.code == .invalidArgument)
        }
    }

    @Test func batchReadGivesEachBlobItsStatus() async throws {
        try await withServer([memoryInstance()]) { clients in
            let present = Blob.random(size: 300)
            let absent = Blob.random(size: 300)
            _ = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [.with { $0.digest = present.digest.proto; $0.data = present.data }]
            })
            let response = try await clients.cas.batchReadBlobs(.with {
                $0.digests = [present.digest.proto, absent.digest.proto, Digest.emptySHA256.proto, protoDigest("x", 1)]
            })
            #expect(response.responses.map(\.status.code) == [0, 5, 0, 3])
            #expect(response.responses[0].data == present.data)
            #expect(response.responses[1].status.message.contains(absent.digest.hash))
        }
    }

    @Test func readOnlyCASRefusesUploads() async throws {
        try await withServer([memoryInstance(readOnly: true)]) { clients in
            let blob = Blob.random(size: 10)
            let failure = await rpcFailure {
                _ = try await clients.cas.batchUpdateBlobs(.with {
                    $0.requests = [.with { $0.digest = blob.digest.proto; $0.data = blob.data }]
                })
            }
            #expect(failure?.code == .permissionDenied)
            let write = await rpcFailure { _ = try await clients.byteStream.upload("uploads/u/blobs/\(blob.digest)", blob.data) }
            #expect(write?.code == .permissionDenied)
        }
    }

    @Test func getTreePagesThroughEveryDirectory() async throws {
        try await withServer([memoryInstance()]) { clients in
            // root -> a, b, c; each -> two leaves; one child of c is missing from the CAS.
            func directory(_ children: [(String, Digest)], file: String) -> (Blob, Build_Bazel_Remote_Execution_V2_Directory) {
                let message = Build_Bazel_Remote_Execution_V2_Directory.with {
                    $0.files = [.with { $0.name = file; $0.digest = Digest.emptySHA256.proto }]
                    $0.directories = children.map { name, digest in .with { $0.name = name; $0.digest = digest.proto } }
                }
                return (Blob(try! message.serializedData()), message)
            }
            var uploads: [Blob] = []
            var middles: [(String, Digest)] = []
            for name in ["a", "b", "c"] {
                let leaves = (0..<2).map { directory([], file: "\(name)\($0)") }
                var children = leaves.enumerated().map { ("leaf\($0.offset)", $0.element.0.digest) }
                uploads += leaves.map(\.0)
                if name == "c" {
                    children.append(("ghost", Blob.random(size: 50).digest))
                }
                let middle = directory(children, file: name)
                uploads.append(middle.0)
                middles.append((name, middle.0.digest))
            }
            let root = directory(middles, file: "root")
            uploads.append(root.0)
            _ = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = uploads.map { blob in .with { $0.digest = blob.digest.proto; $0.data = blob.data } }
            })

            func getTree(pageSize: Int32, token: String = "") async throws -> [Build_Bazel_Remote_Execution_V2_GetTreeResponse] {
                try await clients.cas.getTree(.with {
                    $0.rootDigest = root.0.digest.proto
                    $0.pageSize = pageSize
                    $0.pageToken = token
                }) { response in
                    var pages: [Build_Bazel_Remote_Execution_V2_GetTreeResponse] = []
                    for try await page in response.messages { pages.append(page) }
                    return pages
                }
            }
            let all = try await getTree(pageSize: 0)
            #expect(all.flatMap(\.directories).count == 10)
            #expect(all.flatMap(\.directories).first == root.1)
            let paged = try await getTree(pageSize: 3)
            #expect(paged.map(\.directories.count) == [3, 3, 3, 1])
            #expect(paged.flatMap(\.directories) == all.flatMap(\.directories))
            #expect(paged.last?.nextPageToken == "")
            let resumed = try await getTree(pageSize: 3, token: paged[1].nextPageToken)
            #expect(resumed.flatMap(\.directories) == Array(all.flatMap(\.directories).dropFirst(6)))

            let missingRoot = await rpcFailure {
                _ = try await clients.cas.getTree(.with { $0.rootDigest = Blob.random(size: 20).digest.proto }) { response in
                    for try await _ in response.messages {}
                }
            }
            #expect(missingRoot?.code == .notFound)
            let badToken = await rpcFailure { _ = try await getTree(pageSize: 3, token: "garbage!") }
            #expect(badToken?.code == .invalidArgument)
        }
    }

    @Test func splitAndSpliceAreUnimplemented() async throws {
        try await withServer([memoryInstance()]) { clients in
            let split = await rpcFailure { _ = try await clients.cas.splitBlob(.with { _ in }) }
            #expect(split?.code == .unimplemented)
        }
    }
}
