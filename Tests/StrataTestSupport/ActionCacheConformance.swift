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
        .init(name: "every digest function round-trips", body: everyFunction),
        .init(name: "same hex and size under two functions are two entries", body: sameHexTwoFunctions),
    ]

    /// A result whose outputs are all inlined or empty, so completeness checks pass on an empty CAS.
    public static func result(exitCode: Int32 = 0, stdout: String = "ok", function: DigestFunction = .sha256) -> ActionResult {
        .with {
            $0.exitCode = exitCode
            $0.stdoutRaw = Data(stdout.utf8)
            $0.outputFiles = [.with {
                $0.path = "out/empty"
                $0.digest = .with { $0.hash = Digest.empty(function).hash; $0.sizeBytes = 0 }
            }]
        }
    }

    static func everyFunction(_ cache: any ActionCache) async throws {
        for function in DigestFunction.supported {
            let action = Blob.random(size: 100, function: function).digest
            let result = result(stdout: "\(function)", function: function)
            try await cache.update(action, result)
            try expect(try await cache.get(action) == result, "a \(function) action's result read back differently")
        }
    }

    /// A BLAKE3 and a SHA-256 action digest with the same hex and size are two keys.
    static func sameHexTwoFunctions(_ cache: any ActionCache) async throws {
        let blake3 = Blob.random(size: 100, function: .blake3).digest
        let sha256 = try Digest(hash: blake3.hash, sizeBytes: blake3.sizeBytes, function: .sha256)
        let blake3Result = result(stdout: "blake3", function: .blake3)
        let sha256Result = result(stdout: "sha256")
        try await cache.update(blake3, blake3Result)
        try expect(try await cache.get(sha256) == nil, "a BLAKE3 action's result was found under the SHA-256 digest with its hex")
        try await cache.update(sha256, sha256Result)
        try expect(try await cache.get(blake3) == blake3Result, "a SHA-256 update replaced the BLAKE3 result with the same hex")
        try expect(try await cache.get(sha256) == sha256Result, "the SHA-256 result read back differently")
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
