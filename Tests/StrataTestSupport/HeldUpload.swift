import Foundation
import StrataCore
import Synchronization

/// An upload that stops after its first 2 MiB until released: a write in flight, for tests of what
/// may happen meanwhile (another process preparing or loading the same storage).
public final class HeldUpload: Sendable {
    public let blob: Blob
    private let halfway = AsyncStream<Void>.makeStream()
    private let resume = AsyncStream<Void>.makeStream()

    public init(_ blob: Blob) {
        precondition(blob.data.count > 2 << 20, "the held upload sends 2 MiB first")
        self.blob = blob
    }

    public var body: BlobBody {
        let data = blob.data
        let halfway = halfway.continuation
        let resume = resume.stream
        return BlobBody {
            var step = 0
            var resumed = resume.makeAsyncIterator()
            return BlobBody.AsyncIterator {
                step += 1
                switch step {
                case 1, 2: return data[((step - 1) << 20)..<(step << 20)]
                case 3:
                    halfway.yield()
                    _ = await resumed.next()
                    return data[(2 << 20)...]
                default: return nil
                }
            }
        }
    }

    /// Returns once the first 2 MiB were handed to the store.
    public func waitUntilHalfway() async {
        var iterator = halfway.stream.makeAsyncIterator()
        _ = await iterator.next()
    }

    public func release() { resume.continuation.yield() }
}
