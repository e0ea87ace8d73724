import Crypto
import Foundation
import Logging
import NIOPosix
import StrataCore
import StrataHTTPClient

/// An S3 key pair (and a session token for temporary credentials).
public struct S3Credentials: Sendable, Equatable {
    public var accessKey: String
    public var secretKey: String
    public var sessionToken: String?

    public init(accessKey: String, secretKey: String, sessionToken: String? = nil) {
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.sessionToken = sessionToken
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, as the AWS tools read them.
    public static func fromEnvironment(_ environment: [String: String]) -> S3Credentials? {
        guard let access = environment["AWS_ACCESS_KEY_ID"], !access.isEmpty,
              let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else { return nil }
        let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        return S3Credentials(accessKey: access, secretKey: secret, sessionToken: token)
    }
}

/// How often and how patiently a request is retried after a connection failure or a 5xx/throttling reply.
/// An object as a listing describes it.
public struct S3ObjectSummary: Sendable, Hashable {
    public var key: String
    public var size: Int64
    public var lastModified: Date
}

public struct S3RetryPolicy: Sendable, Equatable {
    /// Attempts in all, the first included.
    public var maxAttempts: Int
    /// The backoff before retry `n` is random in `0...min(maxDelay, baseDelay * 2^(n-1))` ("full jitter").
    public var baseDelaySeconds: Double
    public var maxDelaySeconds: Double
    /// No retry starts later than this after the first attempt (sooner when the client's deadline is
    /// nearer): S3 failing or hanging costs a request seconds, not attempts × timeouts.
    public var budgetSeconds: Double

    public init(maxAttempts: Int = 5, baseDelaySeconds: Double = 0.2, maxDelaySeconds: Double = 5, budgetSeconds: Double = 10) {
        self.maxAttempts = max(1, maxAttempts)
        self.baseDelaySeconds = baseDelaySeconds
        self.maxDelaySeconds = maxDelaySeconds
        self.budgetSeconds = budgetSeconds
    }

    var policy: RetryPolicy {
        RetryPolicy(maxAttempts: maxAttempts, baseDelay: .seconds(baseDelaySeconds), maxDelay: .seconds(maxDelaySeconds),
                    budget: .seconds(budgetSeconds))
    }
}

public struct S3ClientConfiguration: Sendable, Equatable {
    /// `http(s)://host[:port]`; buckets are addressed path-style under it.
    public var endpoint: String
    public var region: String
    public var credentials: S3Credentials
    public var connectTimeoutSeconds: Double
    /// The transfer timeout of requests that carry no blob data (HEAD, create, complete, delete).
    public var controlTimeoutSeconds: Double
    /// A request during which no byte moves for this long has failed (S3 accepted the connection and
    /// went silent); unlike a transfer timeout it never cuts a long transfer that keeps moving.
    public var stallTimeoutSeconds: Double
    public var retry: S3RetryPolicy

    public init(endpoint: String, region: String, credentials: S3Credentials, connectTimeoutSeconds: Double = 10,
                controlTimeoutSeconds: Double = 120, stallTimeoutSeconds: Double = 10, retry: S3RetryPolicy = S3RetryPolicy()) {
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.controlTimeoutSeconds = controlTimeoutSeconds
        self.stallTimeoutSeconds = stallTimeoutSeconds
        self.retry = retry
    }

    /// `AWS_DEFAULT_REGION`, else `AWS_REGION`, else us-east-1.
    public static func defaultRegion(_ environment: [String: String]) -> String {
        for name in ["AWS_DEFAULT_REGION", "AWS_REGION"] {
            if let region = environment[name], !region.isEmpty { return region }
        }
        return "us-east-1"
    }

    /// AWS's regional endpoint, for configurations that name no endpoint.
    public static func awsEndpoint(region: String) -> String { "https://s3.\(region).amazonaws.com" }
}

/// A small S3 client: the object operations a CAS needs, signed with SigV4 by libcurl.
///
/// Every request is retried with backoff on connection failures, stalls, 5xx and throttling replies,
/// within `retry`'s budget and the client's deadline (`RequestDeadline`), which also bounds each
/// attempt; what still fails is a `StrataError`: UNAVAILABLE when S3 cannot be reached, hangs or keeps
/// failing, NOT_FOUND for a missing object, INTERNAL for everything that is the server's configuration
/// (credentials, bucket).
public final class S3Client: Sendable {
    public let configuration: S3ClientConfiguration
    private let transport: CurlTransport
    private let baseURL: String
    private let logger: Logger

    /// Blocking libcurl calls wait on the network, not the CPU: more threads than cores, shared by all
    /// clients so that many stores do not multiply them.
    public static let sharedThreadPool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 32)
        pool.start()
        return pool
    }()

    public init(_ configuration: S3ClientConfiguration, threadPool: NIOThreadPool = S3Client.sharedThreadPool,
                logger: Logger = Logger(label: "strata.s3")) {
        self.configuration = configuration
        self.logger = logger
        var base = configuration.endpoint
        while base.hasSuffix("/") { base.removeLast() }
        self.baseURL = base
        self.transport = CurlTransport(
            signing: .init(region: configuration.region, accessKey: configuration.credentials.accessKey,
                           secretKey: configuration.credentials.secretKey),
            connectTimeoutSeconds: configuration.connectTimeoutSeconds, threadPool: threadPool)
    }

    // MARK: Operations

    public func createBucket(_ bucket: String) async throws {
        let response = try await send("PUT", bucket: bucket, key: nil)
        guard response.status == 200 else { throw failure(response, "PUT", bucket: bucket, key: nil) }
    }

    /// Whether `bucket` exists and these credentials may list it (HEAD of the bucket); throws saying
    /// which when not. AWS answers HEAD with no body, so the status alone tells.
    public func headBucket(_ bucket: String) async throws {
        let response = try await send("HEAD", bucket: bucket, key: nil)
        switch response.status {
        case 200..<300: return
        case 404: throw StrataError.internal("S3 bucket \"\(bucket)\" does not exist at \(baseURL)")
        case 401, 403:
            throw StrataError.internal(
                "S3 refused HEAD of bucket \"\(bucket)\" at \(baseURL) (HTTP \(response.status)): check the access-key, "
                    + "secret-key and region, and that they grant s3:ListBucket on the bucket")
        default: throw failure(response, "HEAD", bucket: bucket, key: nil)
        }
    }

    /// The object's size, or nil when there is no such object.
    public func headObject(bucket: String, key: String) async throws -> Int64? {
        let response = try await send("HEAD", bucket: bucket, key: key)
        switch response.status {
        case 200: return response.headers["content-length"].flatMap { Int64($0) }
        case 404: return nil
        default:
            // HEAD replies carry no body, hence no S3 error code: a GET of one byte gets the explanation.
            let explained = try await send("GET", bucket: bucket, key: key, headers: [("Range", "bytes=0-0")])
            let explanation = explained.status >= 300 ? explained : response
            if response.status == 403, Self.isMissingWithoutListPermission(explanation) {
                warnMissingListPermission(bucket: bucket, key: key)
                return nil
            }
            throw failure(explanation, "HEAD", bucket: bucket, key: key)
        }
    }

    /// Whether a 403 to a HEAD means "no such key" for a caller without `s3:ListBucket`: AWS answers
    /// 403 instead of 404 then, and the GET that explains it says AccessDenied (or NoSuchKey). Refused
    /// credentials (InvalidAccessKeyId, SignatureDoesNotMatch…) remain a configuration error.
    static func isMissingWithoutListPermission(_ explanation: HTTPResponse) -> Bool {
        if explanation.status == 404 { return S3XMLDocument(explanation.body)?.first("Error/Code") != "NoSuchBucket" }
        guard explanation.status == 403 else { return false }
        let code = S3XMLDocument(explanation.body)?.first("Error/Code")
        return code == nil || code == "AccessDenied" || code == "NoSuchKey"
    }

    private let listPermissionWarnings = WarningRateLimit(interval: .seconds(300))

    private func warnMissingListPermission(bucket: String, key: String) {
        guard let heldBack = listPermissionWarnings.admit() else { return }
        logger.warning(
            """
            S3 bucket "\(bucket)" at \(baseURL) answered 403 to HEAD \(key): taken as a missing object, as AWS \
            answers 403 rather than 404 for a missing key when the credentials lack s3:ListBucket on the bucket; \
            grant it so missing blobs are told apart from refused ones\(heldBack > 0 ? " (\(heldBack) more since the last warning)" : "")
            """)
    }

    /// The object's bytes in `range` (all of it when nil), and its whole size when S3 says it.
    /// NOT_FOUND when there is no such object.
    public func getObject(bucket: String, key: String, range: Range<Int64>? = nil,
                          timeoutSeconds: Double? = nil) async throws -> (data: Data, totalSize: Int64?) {
        var headers: [(String, String)] = []
        var limit = 64 << 20
        if let range {
            precondition(!range.isEmpty, "S3 cannot serve an empty range")
            headers.append(("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)"))
            limit = range.count
        }
        let response = try await send("GET", bucket: bucket, key: key, headers: headers,
                                      timeoutSeconds: timeoutSeconds, responseLimit: max(limit, 1 << 16))
        switch response.status {
        case 200:
            return (response.body, Int64(response.body.count))
        case 206:
            // Content-Range: bytes FIRST-LAST/TOTAL
            let total = response.headers["content-range"]?.split(separator: "/").last.flatMap { Int64($0) }
            return (response.body, total)
        default:
            throw failure(response, "GET", bucket: bucket, key: key)
        }
    }

    /// Stores `data` under `key`. `sha256Hex`, when the caller already knows it, saves hashing again.
    public func putObject(bucket: String, key: String, data: Data, sha256Hex: String? = nil,
                          timeoutSeconds: Double? = nil) async throws {
        let response = try await send("PUT", bucket: bucket, key: key, body: data, bodySHA256: sha256Hex,
                                      timeoutSeconds: timeoutSeconds)
        guard response.status == 200 else { throw failure(response, "PUT", bucket: bucket, key: key) }
    }

    /// Starts a multipart upload; nothing is visible under `key` until it completes.
    public func createMultipartUpload(bucket: String, key: String) async throws -> String {
        let response = try await send("POST", bucket: bucket, key: key, query: [("uploads", "")])
        guard response.status == 200 else { throw failure(response, "create multipart upload", bucket: bucket, key: key) }
        guard let id = S3XMLDocument(response.body)?.first("InitiateMultipartUploadResult/UploadId"), !id.isEmpty else {
            throw StrataError.internal("S3 bucket \"\(bucket)\": create multipart upload of \(key) answered without an UploadId")
        }
        return id
    }

    /// Uploads part `partNumber` (from 1) and returns its ETag, which completing the upload needs.
    public func uploadPart(bucket: String, key: String, uploadId: String, partNumber: Int, data: Data,
                           timeoutSeconds: Double? = nil) async throws -> String {
        let response = try await send(
            "PUT", bucket: bucket, key: key, query: [("partNumber", "\(partNumber)"), ("uploadId", uploadId)],
            body: data, timeoutSeconds: timeoutSeconds)
        guard response.status == 200 else { throw failure(response, "upload part \(partNumber)", bucket: bucket, key: key) }
        guard let etag = response.headers["etag"], !etag.isEmpty else {
            throw StrataError.internal("S3 bucket \"\(bucket)\": part \(partNumber) of \(key) was stored without an ETag")
        }
        return etag
    }

    public func completeMultipartUpload(bucket: String, key: String, uploadId: String,
                                        parts: [(number: Int, etag: String)]) async throws {
        let response = try await send(
            "POST", bucket: bucket, key: key, query: [("uploadId", uploadId)],
            headers: [("Content-Type", "application/xml")], body: S3XMLBuilder.completeMultipartUpload(parts))
        // S3 may answer 200 and still report a failure in the body, once the upload has started.
        if response.status == 200, let document = S3XMLDocument(response.body), document.root != "Error" { return }
        throw failure(response, "complete multipart upload", bucket: bucket, key: key)
    }

    public func abortMultipartUpload(bucket: String, key: String, uploadId: String) async throws {
        let response = try await send("DELETE", bucket: bucket, key: key, query: [("uploadId", uploadId)])
        guard response.status == 204 || response.status == 200 || response.status == 404 else {
            throw failure(response, "abort multipart upload", bucket: bucket, key: key)
        }
    }

    /// Multipart uploads started and neither completed nor aborted (first page, up to 1000).
    public func listMultipartUploads(bucket: String, prefix: String? = nil) async throws -> [(key: String, uploadId: String)] {
        var query = [("uploads", "")]
        if let prefix { query.append(("prefix", prefix)) }
        let response = try await send("GET", bucket: bucket, key: nil, query: query)
        guard response.status == 200, let document = S3XMLDocument(response.body) else {
            throw failure(response, "list multipart uploads", bucket: bucket, key: nil)
        }
        return document.records("ListMultipartUploadsResult/Upload").compactMap { record in
            guard let key = record["Key"], let id = record["UploadId"] else { return nil }
            return (key, id)
        }
    }

    /// One page (up to 1000) of the objects under `prefix`, by ListObjectsV2; `next` continues the listing.
    public func listObjects(bucket: String, prefix: String? = nil, continuationToken: String? = nil) async throws
        -> (objects: [S3ObjectSummary], next: String?)
    {
        var query = [("list-type", "2")]
        if let prefix, !prefix.isEmpty { query.append(("prefix", prefix)) }
        if let continuationToken { query.append(("continuation-token", continuationToken)) }
        let response = try await send("GET", bucket: bucket, key: nil, query: query, responseLimit: 8 << 20)
        guard response.status == 200, let document = S3XMLDocument(response.body), document.root == "ListBucketResult" else {
            throw failure(response, "list objects", bucket: bucket, key: nil)
        }
        let objects = try document.records("ListBucketResult/Contents").map { record -> S3ObjectSummary in
            guard let key = record["Key"], let size = record["Size"].flatMap({ Int64($0) }),
                  let modified = record["LastModified"].flatMap(Self.parseTimestamp)
            else {
                throw StrataError.internal("S3 bucket \"\(bucket)\": list objects answered an entry without Key, Size or LastModified")
            }
            return S3ObjectSummary(key: key, size: size, lastModified: modified)
        }
        let truncated = document.first("ListBucketResult/IsTruncated") == "true"
        let next = truncated ? document.first("ListBucketResult/NextContinuationToken") : nil
        if truncated && (next ?? "").isEmpty {
            throw StrataError.internal("S3 bucket \"\(bucket)\": a truncated listing came without a NextContinuationToken")
        }
        return (objects, next)
    }

    /// S3's ISO 8601 times, with or without fractional seconds.
    static func parseTimestamp(_ text: String) -> Date? {
        (try? withFraction.parse(text)) ?? (try? withoutFraction.parse(text))
    }

    private static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let withoutFraction = Date.ISO8601FormatStyle()

    /// Deletes up to 1000 objects in one request; absent keys count as deleted. Returns the keys S3
    /// could not delete, with its error code.
    public func deleteObjects(bucket: String, keys: [String]) async throws -> [(key: String, code: String)] {
        precondition(keys.count <= 1000, "DeleteObjects takes at most 1000 keys")
        let body = S3XMLBuilder.deleteObjects(keys)
        let md5 = Data(Insecure.MD5.hash(data: body)).base64EncodedString()
        let response = try await send(
            "POST", bucket: bucket, key: nil, query: [("delete", "")],
            headers: [("Content-MD5", md5), ("Content-Type", "application/xml")], body: body)
        guard response.status == 200, let document = S3XMLDocument(response.body), document.root != "Error" else {
            throw failure(response, "delete objects", bucket: bucket, key: nil)
        }
        return document.records("DeleteResult/Error").map { ($0["Key"] ?? "?", $0["Code"] ?? "unknown") }
    }

    // MARK: Requests

    private static let emptySHA256 = SHA256.hash(data: Data()).hexString

    /// Sends one request, retrying transient failures; returns the final response whatever its status,
    /// except that a retryable status still failing after the last attempt is UNAVAILABLE.
    private func send(
        _ method: String, bucket: String, key: String?, query: [(String, String)] = [],
        headers: [(String, String)] = [], body: Data? = nil, bodySHA256: String? = nil,
        timeoutSeconds: Double? = nil, responseLimit: Int = 1 << 20
    ) async throws -> HTTPResponse {
        let transferTimeout = timeoutSeconds ?? configuration.controlTimeoutSeconds
        var request = HTTPRequest(method: method, url: url(bucket: bucket, key: key, query: query),
                                  timeoutSeconds: transferTimeout, stallTimeoutSeconds: configuration.stallTimeoutSeconds,
                                  responseLimit: responseLimit)
        request.headers = headers.map { (name: $0.0, value: $0.1) }
        // libcurl 7.88 signs this header but does not add it; S3 requires it and checks the body against it.
        let payloadHash = bodySHA256 ?? body.map { SHA256.hash(data: $0).hexString } ?? Self.emptySHA256
        request.headers.append((name: "x-amz-content-sha256", value: payloadHash))
        if let token = configuration.credentials.sessionToken {
            request.headers.append((name: "x-amz-security-token", value: token))
        }
        request.body = body

        let what = "\(method) \(bucket)/\(key ?? "")"
        var attempts = 0
        do {
            return try await configuration.retry.policy.run(isTransient: { $0 is TransientS3Failure }) { attempt in
                attempts = attempt
                var bounded = request
                if let remaining = RequestDeadline.remaining {
                    guard remaining > .zero else {
                        throw TransientS3Failure(problem: "the client's deadline passed")
                    }
                    bounded.timeoutSeconds = min(transferTimeout, remaining.timeInterval)
                    bounded.boundedByClientDeadline = remaining.timeInterval < transferTimeout
                }
                do {
                    let response = try await transport.perform(bounded)
                    guard Self.retryableStatuses.contains(response.status) || Self.isThrottling(response) else {
                        return response
                    }
                    throw TransientS3Failure(problem: describe(response))
                } catch let failure as CurlFailure {
                    if failure.isCancellation { throw CancellationError() }
                    guard failure.isTransient else {
                        throw StrataError.internal("S3 at \(baseURL): \(what): \(failure.message)")
                    }
                    throw TransientS3Failure(problem: failure.message)
                }
            }
        } catch let failure as TransientS3Failure {
            throw StrataError.unavailable(
                "S3 at \(baseURL) is unavailable: \(what) failed \(attempts) time\(attempts == 1 ? "" : "s"), last with: \(failure.problem)")
        }
    }

    /// An attempt that failed in a way another attempt may not (connection, stall, 5xx, throttling).
    private struct TransientS3Failure: Error {
        let problem: String
    }

    /// Statuses worth retrying, as the AWS SDKs do: timeouts, throttling, server errors.
    private static let retryableStatuses: Set<Int> = [408, 429, 500, 502, 503, 504, 509]

    private static func isThrottling(_ response: HTTPResponse) -> Bool {
        guard response.status >= 400, let code = S3XMLDocument(response.body)?.first("Error/Code") else { return false }
        return ["SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestTimeout", "InternalError"]
            .contains(code)
    }

    private func describe(_ response: HTTPResponse) -> String {
        let document = S3XMLDocument(response.body)
        var text = "HTTP \(response.status)"
        if let code = document?.first("Error/Code") { text += " \(code)" }
        if let message = document?.first("Error/Message"), !message.isEmpty { text += ": \(message)" }
        return text
    }

    /// The StrataError for an S3 error reply, by what it means for the REAPI client.
    func failure(_ response: HTTPResponse, _ operation: String, bucket: String, key: String?) -> StrataError {
        let code = S3XMLDocument(response.body)?.first("Error/Code")
        let object = key.map { "\(bucket)/\($0)" } ?? bucket
        let detail = describe(response)
        switch (response.status, code) {
        case (404, "NoSuchBucket"):
            return .internal("S3 bucket \"\(bucket)\" does not exist at \(baseURL) (\(operation): \(detail))")
        case (404, nil), (404, "NoSuchKey"):
            return .notFound("S3 object \(object) does not exist (\(operation): \(detail))")
        case (416, _):
            // A ranged GET past the object's end: the object is not the blob its key names.
            return .notFound("S3 object \(object) is shorter than the range asked for (\(operation): \(detail))")
        case (403, _), (401, _):
            // Bad credentials or a missing permission are the server's misconfiguration: INTERNAL, so the
            // client neither retries in vain (UNAVAILABLE) nor blames its own rights (PERMISSION_DENIED).
            return .internal(
                "S3 refused access to bucket \"\(bucket)\" at \(baseURL) (\(operation) \(object): \(detail)): "
                    + "check the access-key, secret-key and region of this !s3-storage")
        default:
            return .internal("S3 bucket \"\(bucket)\" at \(baseURL): \(operation) \(object) failed with \(detail)")
        }
    }

    // MARK: URLs

    private func url(bucket: String, key: String?, query: [(String, String)]) -> String {
        var url = "\(baseURL)/\(Self.encode(bucket, keepSlash: false))"
        if let key { url += "/" + Self.encode(key, keepSlash: true) }
        if !query.isEmpty {
            // SigV4 wants the query sorted and encoded; libcurl signs it exactly as written here.
            let encoded = query.map { (Self.encode($0.0, keepSlash: false), Self.encode($0.1, keepSlash: false)) }
            url += "?" + encoded.sorted { $0 < $1 }.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
        }
        return url
    }

    /// SigV4's URI encoding: everything but unreserved characters (and `/` in keys) as upper-case %XX.
    static func encode(_ text: String, keepSlash: Bool) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
                 UInt8(ascii: "~"):
                out.append(Character(UnicodeScalar(byte)))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }
}
