import Foundation
import StrataCore

/// Two caches kept in step: updates go to both (and fail if either fails); a get asks `first`, then
/// `second`, and copies an entry found in only one of them to the other (repair on read).
public struct MirroredActionCache: ActionCache {
    public let first: any ActionCache
    public let second: any ActionCache

    public init(first: any ActionCache, second: any ActionCache) {
        self.first = first
        self.second = second
    }

    public var allowsUpdates: Bool { first.allowsUpdates && second.allowsUpdates }

    public func get(_ action: Digest) async throws -> ActionResult? {
        async let fromFirst = Result { try await first.get(action) }
        async let fromSecond = Result { try await second.get(action) }
        let (a, b) = await (fromFirst, fromSecond)
        switch (a, b) {
        case (.success(let result?), .success(nil)):
            try? await second.update(action, result)
            return result
        case (.success(nil), .success(let result?)):
            try? await first.update(action, result)
            return result
        case (.success(let result?), _), (_, .success(let result?)):
            return result
        case (.success(nil), .success(nil)):
            return nil
        case (.failure(let error), _), (_, .failure(let error)):
            throw error
        }
    }

    public func update(_ action: Digest, _ result: ActionResult) async throws {
        async let a: Void = first.update(action, result)
        async let b: Void = second.update(action, result)
        try await a
        try await b
    }

    public func remove(_ action: Digest) async throws {
        async let a: Void = first.remove(action)
        async let b: Void = second.remove(action)
        try await a
        try await b
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
