import Foundation
import StrataActionCache
import StrataCore

/// The contract every `ActionCache` must honour, as named cases a test target runs against its cache
/// (like `BlobStoreConformance`). Caches under test must accept updates of any exit code.
public struct ActionCacheConformance: Sendable, CustomStringConvertible {
    public let name: String
    let body: @Sendable (any ActionCache) async throws -> Void

    public var description: String { name }

    public func run(on cache: any ActionCache) async throws { try await body(cache) }

    public static let cases: [ActionCacheConformance] = [
        .init(name: "round trip", body: roundTrip),
        .init(name: "absent is nil, not an error", body: absent),
        .init(name: "same hash with another size is another key", body: otherSize),
        .init(name: "update replaces", body: replaces),
        .init(name: "remove", body: remove),
        .init(name: "large result", body: largeResult),
        .init(name: "concurrent updates and gets", body: concurrent),
    ]

    /// A result whose outputs are all inlined or empty, so completeness checks pass on an empty CAS.
    public static func result(exitCode: Int32 = 0, stdout: String = "ok") -> ActionResult {
        .with {
            $0.exitCode = exitCode
            $0.stdoutRaw = Data(stdout.utf8)
            $0.outputFiles = [.with {
                $0.path = "out/empty"
                $0.digest = .with { $0.hash = Digest.emptySHA256.hash; $0.sizeBytes = 0 }
            }]
        }
    }

    static func roundTrip(_ cache: any ActionCache) async throws {
        let action = Blob.random(size: 100).digest
        let result = result(stdout: "hello")
        try await cache.update(action, result)
        try expect(try await cache.get(action) == result, "a stored result read back differently")
    }

    static func absent(_ cache: any ActionCache) async throws {
        try expect(try await cache.get(Blob.random(size: 100).digest) == nil, "an absent action has a result")
    }

    static func otherSize(_ cache: any ActionCache) async throws {
        let action = Blob.random(size: 100).digest
        try await cache.update(action, result())
        let other = try Digest(hash: action.hash, sizeBytes: 101)
        try expect(try await cache.get(other) == nil, "a result was found under the same hash with another size")
    }

    static func replaces(_ cache: any ActionCache) async throws {
        let action = Blob.random(size: 100).digest
        try await cache.update(action, result(stdout: "first"))
        try await cache.update(action, result(stdout: "second"))
        try expect(try await cache.get(action) == result(stdout: "second"), "an update did not replace the result")
    }

    static func remove(_ cache: any ActionCache) async throws {
        let action = Blob.random(size: 100).digest
        try await cache.update(action, result())
        try await cache.remove(action)
        try expect(try await cache.get(action) == nil, "a removed result is still there")
        try await cache.remove(action)
    }

    static func largeResult(_ cache: any ActionCache) async throws {
        let action = Blob.random(size: 100).digest
        var result = result()
        result.stdoutRaw = Blob.random(size: 1 << 20).data
        result.outputFiles += (0..<1000).map { index in .with {
            $0.path = "out/file-\(index)"
            $0.digest = .with { $0.hash = Digest.emptySHA256.hash; $0.sizeBytes = 0 }
        } }
        try await cache.update(action, result)
        try expect(try await cache.get(action) == result, "a large result read back differently")
    }

    static func concurrent(_ cache: any ActionCache) async throws {
        let actions = (0..<20).map { _ in Blob.random(size: 50).digest }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, action) in actions.enumerated() {
                group.addTask { try await cache.update(action, result(stdout: "\(index)")) }
                group.addTask { _ = try await cache.get(action) }
            }
            try await group.waitForAll()
        }
        for (index, action) in actions.enumerated() {
            try expect(try await cache.get(action) == result(stdout: "\(index)"), "a concurrent update was lost")
        }
    }
}
