import Foundation
import GRPCCore
import StrataCore
import StrataServer
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// Records the request deadline the storage sees in each call.
final class DeadlineRecordingStore: BlobStore {
    let base = LRUBlobStore(capacityBytes: 1 << 20)
    private let seen = Mutex<[String: Duration?]>([:])

    func remaining(_ operation: String) -> Duration?? { seen.withLock { $0[operation] } }

    private func record(_ operation: String) { seen.withLock { $0[operation] = .some(RequestDeadline.remaining) } }

    var maximumBlobSize: Int64? { nil }

    func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        record("findMissing")
        return try await base.findMissing(digests)
    }

    func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        record("read")
        return try await base.read(digest, offset: offset, limit: limit)
    }

    func write(_ digest: Digest, body: BlobBody) async throws {
        record("write")
        try await base.write(digest, body: body)
    }

    func delete(_ digests: [Digest]) async throws { try await base.delete(digests) }
}

/// The client's `grpc-timeout` reaches every storage call made for its request, as the backends'
/// bound (`RequestDeadline`); a request without one leaves them to their own bounds.
@Suite struct RequestDeadlineInterceptorTests {
    @Test func theClientsDeadlineReachesTheStorage() async throws {
        let store = DeadlineRecordingStore()
        let instance = Instance(name: "", cas: .init(store: store, readOnly: false), byteStream: .init(store: store, readOnly: false))
        let blob = Blob.random(size: 3000)
        try await store.base.write(blob.digest, data: blob.data)
        try await withServer([instance]) { clients in
            _ = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [blob.digest.proto] })
            #expect(store.remaining("findMissing") == .some(nil), "no grpc-timeout, yet a deadline was seen")

            var options = CallOptions.defaults
            options.timeout = .seconds(30)
            _ = try await clients.cas.findMissingBlobs(.with { $0.blobDigests = [blob.digest.proto] }, options: options)
            let seen = try #require(store.remaining("findMissing") ?? nil, "the storage saw no deadline")
            #expect(seen > .zero && seen <= .seconds(30), "the storage saw \(seen) left")

            // A streamed response: the read runs while the response is produced.
            let data = try await clients.byteStream.read(.with {
                $0.resourceName = "blobs/\(blob.digest)"
            }, options: options) { response in
                var data = Data()
                for try await message in response.messages { data.append(message.data) }
                return data
            }
            #expect(data == blob.data)
            let seenByRead = try #require(store.remaining("read") ?? nil, "the read saw no deadline")
            #expect(seenByRead > .zero && seenByRead <= .seconds(30))
        }
    }
}
