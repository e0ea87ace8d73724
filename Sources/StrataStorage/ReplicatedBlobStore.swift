import Foundation
import Logging
import StrataCore

/// Keeps every blob on all `replicas`: writes go to all of them (and fail if any fails, so an
/// acknowledged blob has every copy); reads are served by the first replica that has the blob; a blob
/// is missing only when no replica has it. A replica found lacking a blob another one has (by
/// `findMissing`, or by a read when `readReplication` is on) is repaired in the background by copying
/// the blob to it; at most `maxConcurrentRepairs` copies run at once, and a repair skipped then is
/// made on a later access.
public final class ReplicatedBlobStore: BlobStore {
    public let replicas: [any BlobStore]
    public let readReplication: Bool
    private let repairs: RepairQueue

    public init(
        replicas: [any BlobStore], readReplication: Bool = true, maxConcurrentRepairs: Int = 8,
        logger: Logger = Logger(label: "strata.replicated-storage")
    ) {
        precondition(replicas.count >= 2, "replication needs at least two replicas")
        self.replicas = replicas
        self.readReplication = readReplication
        self.repairs = RepairQueue(limit: maxConcurrentRepairs, logger: logger)
    }

    public var maximumBlobSize: Int64? { replicas.compactMap(\.maximumBlobSize).min() }

    /// Repairs started and not finished yet; for tests and shutdown.
    public func repairsInFlight() async -> Int { await repairs.active }

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let unique = digests.uniqued()
        let answers = try await withThrowingTaskGroup(of: (Int, Set<Digest>).self) { group in
            for (index, replica) in replicas.enumerated() {
                group.addTask { (index, Set(try await replica.findMissing(unique))) }
            }
            var answers = [Set<Digest>](repeating: [], count: replicas.count)
            for try await (index, missing) in group { answers[index] = missing }
            return answers
        }
        var missing: [Digest] = []
        for digest in unique {
            let lacking = answers.indices.filter { answers[$0].contains(digest) }
            if lacking.count == replicas.count {
                missing.append(digest)
            } else if !lacking.isEmpty, let source = answers.indices.first(where: { !answers[$0].contains(digest) }) {
                await repair(digest, from: source, to: lacking)
            }
        }
        return missing
    }

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        try await read(digest, offset: offset, limit: limit, from: 0, lacking: [], lastError: nil)
    }

    /// Reads from the replicas from `first` on; `lacking` lists the earlier ones that had no copy.
    private func read(
        _ digest: Digest, offset: Int64, limit: Int64?, from first: Int, lacking: [Int], lastError: StrataError?
    ) async throws -> BlobBody {
        var lacking = lacking
        var lastError = lastError
        for index in replicas.indices.dropFirst(first) {
            let replica = replicas[index]
            do {
                let body = try await replica.read(digest, offset: offset, limit: limit)
                if readReplication && !lacking.isEmpty { await repair(digest, from: index, to: lacking) }
                // A copy found corrupt before its first byte went out (and removed): the next replica
                // serves the read, and repairs this one.
                let lackingNow = lacking + [index]
                let errorSoFar = lastError
                return body.orElseBeforeFirstChunk {
                    try await self.read(digest, offset: offset, limit: limit, from: index + 1, lacking: lackingNow, lastError: errorSoFar)
                }
            } catch let error as StrataError where error.code == .notFound {
                lacking.append(index)
            } catch {
                // Another replica may still serve it; the first real failure is reported if none does.
                if lastError == nil { lastError = StrataError.from(error) }
            }
        }
        throw lastError ?? .notFound("blob \(digest) is not in any replica")
    }

    public func write(_ digest: Digest, body: BlobBody) async throws {
        // The body can be consumed once: the first replica takes the stream; the others copy from it.
        try await replicas[0].write(digest, body: body)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for replica in replicas.dropFirst() {
                group.addTask { try await replica.write(digest, body: try await self.replicas[0].read(digest, offset: 0, limit: nil)) }
            }
            try await group.waitForAll()
        }
    }

    public func delete(_ digests: [Digest]) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for replica in replicas { group.addTask { try await replica.delete(digests) } }
            try await group.waitForAll()
        }
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        var results = await replicas[0].readBatch(digests)
        // Any failure is asked of the next replica, as `read` does: one replica down must not fail batches.
        var remaining = results.indices.filter { if case .failure = results[$0] { true } else { false } }
        var lackingIn: [Int: [Int]] = [:]  // batch index → replicas that lack it
        for index in remaining where results[index].isNotFound { lackingIn[index] = [0] }
        for replicaIndex in replicas.indices.dropFirst() where !remaining.isEmpty {
            let fetched = await replicas[replicaIndex].readBatch(remaining.map { digests[$0] })
            var stillFailing: [Int] = []
            for (index, result) in zip(remaining, fetched) {
                switch result {
                case .success:
                    results[index] = result
                    if readReplication, let lacking = lackingIn[index] {
                        await repair(digests[index], from: replicaIndex, to: lacking)
                    }
                case .failure(let error):
                    stillFailing.append(index)
                    if error.code == .notFound {
                        lackingIn[index, default: []].append(replicaIndex)
                    } else if results[index].isNotFound {
                        // NOT_FOUND only if every replica says so; else the first real failure.
                        results[index] = result
                    }
                }
            }
            remaining = stillFailing
        }
        return results
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        let perReplica = await withTaskGroup(of: (Int, [Result<Void, StrataError>]).self) { group in
            for (index, replica) in replicas.enumerated() {
                group.addTask { (index, await replica.writeBatch(blobs)) }
            }
            var perReplica = [[Result<Void, StrataError>]](repeating: [], count: replicas.count)
            for await (index, results) in group { perReplica[index] = results }
            return perReplica
        }
        return blobs.indices.map { index in
            for results in perReplica { if case .failure = results[index] { return results[index] } }
            return .success(())
        }
    }

    private func repair(_ digest: Digest, from source: Int, to targets: [Int]) async {
        let source = replicas[source]
        for target in targets {
            let replica = replicas[target]
            await repairs.start(digest) {
                try await replica.write(digest, body: try await source.read(digest, offset: 0, limit: nil))
            }
        }
    }
}

extension Result where Failure == StrataError {
    var isNotFound: Bool {
        if case .failure(let error) = self { return error.code == .notFound }
        return false
    }
}

/// Background copies that repair replicas, bounded in number.
actor RepairQueue {
    private let limit: Int
    private let logger: Logger
    private(set) var active = 0

    init(limit: Int, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    func start(_ digest: Digest, _ copy: @escaping @Sendable () async throws -> Void) {
        guard active < limit else { return }
        active += 1
        Task {
            do {
                try await copy()
            } catch {
                self.logger.warning("repairing a replica's copy of \(digest) failed: \(error)")
            }
            self.finished()
        }
    }

    private func finished() { active -= 1 }
}
