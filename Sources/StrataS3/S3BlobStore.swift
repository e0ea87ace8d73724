import Foundation
import StrataCore
import StrataStorage

/// A transfer timeout that grows with the bytes moved, as BuildGrid's
/// `max(min-seconds, size * seconds-per-kilobyte / 1024)`.
public struct S3TransferTimeout: Sendable, Equatable {
    public var minimumSeconds: Double
    public var secondsPerKilobyte: Double?

    public init(minimumSeconds: Double = 120, secondsPerKilobyte: Double? = nil) {
        self.minimumSeconds = minimumSeconds
        self.secondsPerKilobyte = secondsPerKilobyte
    }

    public func seconds(forBytes count: Int) -> Double {
        max(minimumSeconds, secondsPerKilobyte.map { Double(count) * $0 / 1024 } ?? 0)
    }
}

/// Blobs as S3 objects, laid out as BuildGrid lays them out (see `S3ObjectNaming`).
///
/// Writes verify while they stream. A blob up to `singlePutLimit` is gathered, verified, then stored
/// with one PUT; a larger one goes up as a multipart upload of `partSize` parts read from the body as it
/// arrives, completed only once the whole body verified and aborted on any failure, so S3 never shows a
/// partial or wrong object. Reads are ranged GETs of at most `readChunkSize`, one per chunk the consumer
/// pulls, so a multi-GiB blob never sits in memory.
public final class S3BlobStore: ListableBlobStore {
    public struct Options: Sendable, Equatable {
        /// BuildGrid's S3_MAX_UPLOAD_SIZE: larger blobs use a multipart upload.
        public var singlePutLimit: Int = 8 << 20
        /// BuildGrid's S3_MULTIPART_PART_SIZE. S3 refuses non-final parts under 5 MiB.
        public var partSize: Int = 8 << 20
        public var readChunkSize: Int = 4 << 20
        /// HEAD requests in flight at once for FindMissingBlobs, and blobs at once for batches.
        public var concurrency: Int = 32
        public var readTimeout = S3TransferTimeout()
        public var writeTimeout = S3TransferTimeout()

        public init(singlePutLimit: Int = 8 << 20, partSize: Int = 8 << 20, readChunkSize: Int = 4 << 20,
                    concurrency: Int = 32, readTimeout: S3TransferTimeout = S3TransferTimeout(),
                    writeTimeout: S3TransferTimeout = S3TransferTimeout()) {
            self.singlePutLimit = singlePutLimit
            self.partSize = max(partSize, Self.minimumPartSize)
            self.readChunkSize = max(readChunkSize, 1)
            self.concurrency = max(concurrency, 1)
            self.readTimeout = readTimeout
            self.writeTimeout = writeTimeout
        }

        public static let minimumPartSize = 5 << 20
    }

    public let client: S3Client
    public let naming: S3ObjectNaming
    public let options: Options

    /// S3's limits: 10,000 parts per upload, 5 TiB per object.
    static let maximumParts = 10_000
    public var maximumBlobSize: Int64? { 5 << 40 }

    public init(client: S3Client, naming: S3ObjectNaming, options: Options = Options()) {
        self.client = client
        self.naming = naming
        self.options = options
    }

    // MARK: Lookups

    public func findMissing(_ digests: [Digest]) async throws -> [Digest] {
        let candidates = digests.uniqued().filter { !$0.isEmpty }
        if candidates.isEmpty { return [] }
        let answers = await concurrentMap(candidates, maxConcurrency: options.concurrency) { digest in
            try await self.isStored(digest)
        }
        var missing: [Digest] = []
        for (digest, answer) in zip(candidates, answers) {
            if try !answer.get() { missing.append(digest) }
        }
        return missing
    }

    /// The key holds the size, so only a foreign or damaged object can have another; it counts as
    /// absent, and the client's next upload replaces it.
    private func isStored(_ digest: Digest) async throws -> Bool {
        let size = try await client.headObject(bucket: try naming.bucket(for: digest), key: naming.key(for: digest))
        return size == digest.sizeBytes
    }

    // MARK: Reads

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        let bucket = try naming.bucket(for: digest)
        let key = naming.key(for: digest)
        if range.isEmpty {
            // S3 has no empty ranges; the answer still depends on the blob being there.
            guard try await isStored(digest) else { throw notFound(digest) }
            return .empty
        }
        // The first chunk is fetched now so that an absent blob is NOT_FOUND from `read` itself.
        let chunkSize = Int64(options.readChunkSize)
        let firstRange = range.lowerBound..<min(range.upperBound, range.lowerBound + chunkSize)
        let first: Data
        do {
            let answer = try await client.getObject(
                bucket: bucket, key: key, range: firstRange,
                timeoutSeconds: options.readTimeout.seconds(forBytes: firstRange.count))
            guard answer.totalSize == digest.sizeBytes else {
                // A damaged (or foreign) object under the blob's key: DATA_LOSS, which
                // `VerifyingBlobStore` turns into its removal and a NOT_FOUND.
                throw StrataError(.dataLoss,
                    "size mismatch: S3 object \(bucket)/\(key) holds \(answer.totalSize.map(String.init) ?? "an unknown number of") bytes, the digest says \(digest.sizeBytes)")
            }
            first = try checked(answer.data, firstRange, bucket: bucket, key: key)
        } catch let error as StrataError where error.code == .notFound {
            throw notFound(digest)
        }
        let client = self.client
        let timeout = options.readTimeout
        return .ranged(range, chunkSize: chunkSize, first: first) { offset, count in
            let chunkRange = offset..<offset + count
            let answer = try await client.getObject(
                bucket: bucket, key: key, range: chunkRange, timeoutSeconds: timeout.seconds(forBytes: chunkRange.count))
            return try self.checked(answer.data, chunkRange, bucket: bucket, key: key)
        }
    }

    private func checked(_ data: Data, _ range: Range<Int64>, bucket: String, key: String) throws -> Data {
        // The object's size was checked on the first chunk; a short answer after that is a broken
        // transfer, not a damaged object (which must not be removed for it).
        guard Int64(data.count) == Int64(range.count) else {
            throw StrataError.unavailable("S3 object \(bucket)/\(key) returned \(data.count) bytes for range \(range), expected \(range.count)")
        }
        return data
    }

    private func notFound(_ digest: Digest) -> StrataError {
        .notFound("blob \(digest) is not in the CAS")
    }

    // MARK: Writes

    public func write(_ digest: Digest, body: BlobBody) async throws {
        if digest.isEmpty {
            for try await _ in body.verifying(digest) {}
            return
        }
        let bucket = try naming.bucket(for: digest)
        let key = naming.key(for: digest)
        if digest.sizeBytes <= Int64(options.singlePutLimit) {
            // No HEAD first (as BuildGrid): for a small blob it costs about as much as the PUT it saves.
            var data = Data(capacity: Int(digest.sizeBytes))
            for try await chunk in body.verifying(digest) { data.append(chunk) }
            try await client.putObject(
                bucket: bucket, key: key, data: data, sha256Hex: digest.function == .sha256 ? digest.hash : nil,
                timeoutSeconds: options.writeTimeout.seconds(forBytes: data.count))
            return
        }
        // A large blob already stored is not sent again: one HEAD against many megabytes of upload.
        if try await isStored(digest) { return }
        try await multipartUpload(digest, body: body, bucket: bucket, key: key)
    }

    private func multipartUpload(_ digest: Digest, body: BlobBody, bucket: String, key: String) async throws {
        let partSize = Self.partSize(for: digest.sizeBytes, preferred: options.partSize)
        let uploadId = try await client.createMultipartUpload(bucket: bucket, key: key)
        let client = self.client
        let timeout = options.writeTimeout.seconds(forBytes: partSize)
        func upload(_ number: Int, _ data: Data) -> Task<(number: Int, etag: String), any Error> {
            Task {
                (number, try await client.uploadPart(
                    bucket: bucket, key: key, uploadId: uploadId, partNumber: number, data: data, timeoutSeconds: timeout))
            }
        }
        // One part uploads while the next one fills: at most two parts in memory.
        var inFlight: Task<(number: Int, etag: String), any Error>?
        do {
            var parts: [(number: Int, etag: String)] = []
            var buffer = Data(capacity: partSize)
            for try await chunk in body.verifying(digest) {
                var rest = chunk[...]
                while !rest.isEmpty {
                    let take = min(partSize - buffer.count, rest.count)
                    buffer.append(rest.prefix(take))
                    rest = rest.dropFirst(take)
                    if buffer.count == partSize {
                        if let previous = inFlight { parts.append(try await previous.value) }
                        inFlight = upload(parts.count + 1, buffer)
                        buffer = Data(capacity: partSize)
                    }
                }
            }
            // The body verified: only now is the last part sent and the object completed.
            if let previous = inFlight {
                inFlight = nil
                parts.append(try await previous.value)
            }
            if !buffer.isEmpty {
                let last = upload(parts.count + 1, buffer)
                inFlight = last
                parts.append(try await last.value)
                inFlight = nil
            }
            try await client.completeMultipartUpload(bucket: bucket, key: key, uploadId: uploadId, parts: parts)
        } catch {
            inFlight?.cancel()
            _ = try? await inFlight?.value
            // Its own task, so that a cancelled write still cleans up after itself.
            _ = try? await Task {
                try await client.abortMultipartUpload(bucket: bucket, key: key, uploadId: uploadId)
            }.value
            throw error
        }
    }

    /// The preferred size, grown (in whole MiB) when the blob would otherwise need more than 10,000 parts.
    static func partSize(for size: Int64, preferred: Int) -> Int {
        let needed = (size + Int64(maximumParts) - 1) / Int64(maximumParts)
        guard needed > Int64(preferred) else { return preferred }
        let mebibyte: Int64 = 1 << 20
        return Int((needed + mebibyte - 1) / mebibyte * mebibyte)
    }

    // MARK: Deletes and batches

    public func delete(_ digests: [Digest]) async throws {
        var keysByBucket: [String: [String]] = [:]
        for digest in digests.uniqued() where !digest.isEmpty {
            keysByBucket[try naming.bucket(for: digest), default: []].append(naming.key(for: digest))
        }
        for (bucket, keys) in keysByBucket.sorted(by: { $0.key < $1.key }) {
            for start in stride(from: 0, to: keys.count, by: 1000) {
                let failed = try await client.deleteObjects(bucket: bucket, keys: Array(keys[start..<min(start + 1000, keys.count)]))
                if let first = failed.first {
                    throw StrataError.internal(
                        "S3 bucket \"\(bucket)\" did not delete \(failed.count) object(s), e.g. \(first.key): \(first.code)")
                }
            }
        }
    }

    public func readBatch(_ digests: [Digest]) async -> [Result<Data, StrataError>] {
        await concurrentMap(digests, maxConcurrency: options.concurrency) { digest in
            try await self.read(digest, offset: 0, limit: nil).collect(limit: digest.sizeBytes)
        }
    }

    public func writeBatch(_ blobs: [(digest: Digest, data: Data)]) async -> [Result<Void, StrataError>] {
        await concurrentMap(blobs, maxConcurrency: options.concurrency) { blob in
            try await self.write(blob.digest, body: BlobBody(data: blob.data))
        }
    }

    // MARK: Listing

    /// Lists every bucket the template can name: a fixed bucket, or all values of its `{digest[N]}`
    /// characters (at most three positions). `{digest}` buckets cannot be enumerated and are refused.
    public func forEachBlobPage(pageSize: Int, _ body: ([StoredBlob]) async throws -> Void) async throws {
        // A "/" in the listing prefix breaks libcurl 7.88's SigV4 signature (the server computes
        // another canonical query): list by the prefix's first segment; digest(forKey:) checks the rest.
        let prefix = naming.pathPrefix.map { String($0.prefix { $0 != "/" }) } ?? ""
        for bucket in try naming.bucketTemplate.allBuckets() {
            var token: String?
            var page: [StoredBlob] = []
            repeat {
                let listed = try await client.listObjects(bucket: bucket, prefix: prefix, continuationToken: token)
                token = listed.next
                for object in listed.objects {
                    guard let digest = naming.digest(forKey: object.key), digest.sizeBytes == object.size,
                          (try? naming.bucket(for: digest)) == bucket
                    else { continue }
                    page.append(StoredBlob(digest: digest, modified: object.lastModified))
                }
                if page.count >= pageSize || token == nil {
                    if !page.isEmpty { try await body(page) }
                    page.removeAll(keepingCapacity: true)
                }
            } while token != nil
        }
    }
}
