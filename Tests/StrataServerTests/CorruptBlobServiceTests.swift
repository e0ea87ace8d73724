import Foundation
import GRPCCore
import StrataAPI
import StrataConfig
import StrataCore
import StrataRemote
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

/// What a client sees of a blob damaged on disk, through a server built from a configuration (so
/// through the `VerifyingBlobStore` the configuration puts around `!disk-storage`).
@Suite struct CorruptBlobServiceTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-corrupt-service-\(UUID().uuidString)").path

    func instances() throws -> [Instance] {
        try Configuration.parse(yaml: """
            server: [!channel {address: "127.0.0.1:1", insecure-mode: true}]
            storages:
              - &cas !disk-storage {path: !expand-path "${DATA}", sync: false}
            instances:
              - name: ""
                services: [!cas {storage: *cas}, !bytestream {storage: *cas}]
            """, file: "test.yml", environment: ["DATA": root]).instances
    }

    func flipByte(_ blob: Blob) throws {
        let file = "\(root)/cas/\(blob.digest.hash.prefix(2))/\(blob.digest.hash)_\(blob.digest.sizeBytes)"
        try CorruptionScenario.flipped(blob.data).write(to: URL(fileURLWithPath: file))
    }

    func missing(_ clients: Clients, _ blobs: [Blob]) async throws -> [ProtoDigest] {
        try await clients.cas.findMissingBlobs(.with { $0.blobDigests = blobs.map(\.digest.proto) }).missingBlobDigests
    }

    @Test func byteStreamReadOfACorruptBlobEndsWithNotFoundAndTheUploadHealsIt() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withServer(try instances()) { clients in
            let blob = Blob.random(size: 3 << 20 + 77)
            _ = try await clients.byteStream.upload("uploads/\(UUID())/blobs/\(blob.digest)", blob.data, chunkSize: 1 << 20)
            try flipByte(blob)
            let failure = await rpcFailure { _ = try await clients.byteStream.download("blobs/\(blob.digest)") }
            #expect(failure?.code == .notFound)
            #expect(failure?.message.contains("corrupt") == true, "\(String(describing: failure))")
            #expect(try await missing(clients, [blob]) == [blob.digest.proto])
            _ = try await clients.byteStream.upload("uploads/\(UUID())/blobs/\(blob.digest)", blob.data, chunkSize: 1 << 20)
            #expect(try await clients.byteStream.download("blobs/\(blob.digest)") == blob.data)
        }
    }

    @Test func batchReadOfACorruptBlobIsNotFoundAndTheUploadHealsIt() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await withServer(try instances()) { clients in
            let good = Blob.random(size: 2000), bad = Blob.random(size: 3000)
            _ = try await clients.cas.batchUpdateBlobs(.with {
                $0.requests = [good, bad].map { blob in .with { $0.digest = blob.digest.proto; $0.data = blob.data } }
            })
            try flipByte(bad)
            let read = try await clients.cas.batchReadBlobs(.with { $0.digests = [good.digest.proto, bad.digest.proto] })
            #expect(read.responses.map(\.status.code) == [0, 5])
            #expect(read.responses[0].data == good.data && read.responses[1].data.isEmpty)
            #expect(read.responses[1].status.message.contains("corrupt"))
            #expect(try await missing(clients, [good, bad]) == [bad.digest.proto])
            // An upload before any read noticed is not skipped either.
            _ = try await clients.cas.batchUpdateBlobs(.with { $0.requests = [.with { $0.digest = bad.digest.proto; $0.data = bad.data }] })
            try flipByte(good)
            _ = try await clients.cas.batchUpdateBlobs(.with { $0.requests = [.with { $0.digest = good.digest.proto; $0.data = good.data }] })
            let healed = try await clients.cas.batchReadBlobs(.with { $0.digests = [good.digest.proto, bad.digest.proto] })
            #expect(healed.responses.map(\.status.code) == [0, 0])
            #expect(healed.responses.map(\.data) == [good.data, bad.data])
        }
    }
}

/// `!remote-storage` serving wrong bytes (a remote that does not verify its own disk): the verifying
/// store never passes them on, for a streamed or a batch read, and says it could not remove the copy.
@Suite struct CorruptRemoteBlobTests {
    @Test func wrongBytesFromARemoteAreNotServed() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-corrupt-remote-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let unverified = DiskBlobStore(path: root, sync: false)
        let instance = Instance(name: "", cas: .init(store: unverified, readOnly: false), byteStream: .init(store: unverified, readOnly: false))
        try await withServer([instance]) { clients in
            let remote = try RemoteBlobStore(url: "grpc://127.0.0.1:\(clients.port)")
            let store = VerifyingBlobStore(remote, name: "remote storage \(remote.endpoint)") { _ in false }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await remote.channel.run() }
                defer { remote.channel.shutdown() }
                for size in [3000, 3 << 20] {  // a batch-sized blob, and one read through ByteStream in chunks
                    let blob = Blob.random(size: size)
                    try await store.write(blob.digest, data: blob.data)
                    let file = "\(root)/cas/\(blob.digest.hash.prefix(2))/\(blob.digest.hash)_\(blob.digest.sizeBytes)"
                    try CorruptionScenario.flipped(blob.data).write(to: URL(fileURLWithPath: file))
                    do {
                        _ = try await store.readAll(blob.digest)
                        Issue.record("wrong bytes from the remote were served")
                    } catch let error as StrataError {
                        #expect(error.code == .notFound)
                        #expect(error.message.contains("corrupt") && error.message.contains("could not be removed"), "\(error)")
                    }
                    try expectFailure(await store.readBatch([blob.digest])[0], .notFound, "a batch read of wrong bytes from the remote")
                }
            }
        }
    }
}
