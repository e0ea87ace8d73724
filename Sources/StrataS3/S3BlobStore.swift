import Foundation
import StrataCompression
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
///
/// With `compressionLevel`, new blobs are stored as one zstd frame under the blob's key with `.zst`
/// appended (a key BuildGrid never makes), and lookups and reads try that key first, then the
/// uncompressed one, so the blobs stored before compression was switched on stay readable. With it
/// off, the store does exactly what it did before (one HEAD per lookup): `.zst` objects left by an
/// earlier setting are not seen (clients upload those blobs again) and never taken for blobs.
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
        /// The zstd level new blobs are stored at; nil: stored as they are.
        public var compressionLevel: Int32?

        public init(singlePutLimit: Int = 8 << 20, partSize: Int = 8 << 20, readChunkSize: Int = 4 << 20,
                    concurrency: Int = 32, readTimeout: S3TransferTimeout = S3TransferTimeout(),
                    writeTimeout: S3TransferTimeout = S3TransferTimeout(), compressionLevel: Int32? = nil) {
            self.compressionLevel = compressionLevel
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
    /// absent, and the client's next upload replaces it. With compression, a compressed object counts
    /// first (its size is its frame's).
    private func isStored(_ digest: Digest) async throws -> Bool {
        let bucket = try naming.bucket(for: digest)
        if options.compressionLevel != nil, try await client.headObject(bucket: bucket, key: compressedKey(for: digest)) != nil {
            return true
        }
        let size = try await client.headObject(bucket: bucket, key: naming.key(for: digest))
        return size == digest.sizeBytes
    }

    /// The key of a blob stored compressed.
    func compressedKey(for digest: Digest) -> String { naming.key(for: digest) + Self.compressedSuffix }

    static let compressedSuffix = ".zst"

    /// A compressed copy's first chunk (fetched so that an absent one is nil, not a broken stream) and
    /// the ranged body of the whole frame; nil when there is none or compression is off.
    private func compressedObject(_ digest: Digest) async throws -> BlobBody? {
        guard options.compressionLevel != nil else { return nil }
        let bucket = try naming.bucket(for: digest)
        let key = compressedKey(for: digest)
        let chunkSize = Int64(options.readChunkSize)
        let answer: (data: Data, totalSize: Int64?)
        do {
            // A range past a small object's end is answered with what there is.
            answer = try await client.getObject(
                bucket: bucket, key: key, range: 0..<chunkSize, timeoutSeconds: options.readTimeout.seconds(forBytes: Int(chunkSize)))
        } catch let error as StrataError where error.code == .notFound {
            return nil
        }
        guard let total = answer.totalSize, total > 0, Int64(answer.data.count) == min(total, chunkSize) else {
            throw StrataError.unavailable("S3 object \(bucket)/\(key) returned \(answer.data.count) bytes of its first chunk")
        }
        let client = self.client
        let timeout = options.readTimeout
        return .ranged(0..<total, chunkSize: chunkSize, first: answer.data) { offset, count in
            let chunkRange = offset..<offset + count
            let answer = try await client.getObject(
                bucket: bucket, key: key, range: chunkRange, timeoutSeconds: timeout.seconds(forBytes: chunkRange.count))
            return try self.checked(answer.data, chunkRange, bucket: bucket, key: key)
        }
    }

    /// A compressed copy as it is stored; nil for a blob stored uncompressed or absent.
    public func readZstd(_ digest: Digest) async throws -> BlobBody? {
        if digest.isEmpty { return nil }
        return try await compressedObject(digest)
    }

    // MARK: Reads

    public func read(_ digest: Digest, offset: Int64, limit: Int64?) async throws -> BlobBody {
        let range = try validatedRange(digest, offset: offset, limit: limit)
        if digest.isEmpty { return .empty }
        if let frame = try await compressedObject(digest) {
            // A frame that does not decompress to exactly the blob's size is a damaged copy: DATA_LOSS.
            let whole = frame.zstdDecompressed(
                expectedSize: digest.sizeBytes, subject: "blob \(digest) in S3 object \(compressedKey(for: digest))",
                failureCode: .dataLoss)
            return range == 0..<digest.sizeBytes ? whole : whole.slice(range)
        }
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
        let compressed = options.compressionLevel != nil
        let key = compressed ? compressedKey(for: digest) : naming.key(for: digest)
        // Compressed after verification: the frame ends only once the blob verified.
        let verified = body.verifying(digest)
        let stored = options.compressionLevel.map { verified.zstdCompressed(level: $0, uncompressedSize: digest.sizeBytes) } ?? verified
        if digest.sizeBytes <= Int64(options.singlePutLimit) {
            // No HEAD first (as BuildGrid): for a small blob it costs about as much as the PUT it saves.
            var data = Data(capacity: Int(digest.sizeBytes))
            for try await chunk in stored { data.append(chunk) }
            try await client.putObject(
                bucket: bucket, key: key, data: data, sha256Hex: !compressed && digest.function == .sha256 ? digest.hash : nil,
                timeoutSeconds: options.writeTimeout.seconds(forBytes: data.count))
            return
        }
        // A large blob already stored is not sent again: one HEAD against many megabytes of upload.
        if try await isStored(digest) { return }
        // A frame's size is known only at its end: parts are sized for the most it can be.
        let bound = compressed ? Zstd.maximumCompressedSize(ofUncompressed: digest.sizeBytes) : digest.sizeBytes
        try await multipartUpload(stored, size: bound, bucket: bucket, key: key)
    }

    /// Uploads `stream` (verified, and compressed if it is to be stored so) of at most `size` bytes.
    private func multipartUpload(_ stream: BlobBody, size: Int64, bucket: String, key: String) async throws {
        let partSize = Self.partSize(for: size, preferred: options.partSize)
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
            for try await chunk in stream {
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
            if options.compressionLevel != nil {
                keysByBucket[try naming.bucket(for: digest), default: []].append(compressedKey(for: digest))
            }
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
                    // With compression, `.zst` objects are blobs too (of any size).
                    let compressed = options.compressionLevel != nil && object.key.hasSuffix(Self.compressedSuffix)
                    let key = compressed ? String(object.key.dropLast(Self.compressedSuffix.count)) : object.key
                    guard let digest = naming.digest(forKey: key), compressed || digest.sizeBytes == object.size,
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
