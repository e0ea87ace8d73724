import Foundation
import Hummingbird
import Logging
import StrataAPI
import StrataActionCache
import StrataCompression
import StrataAuth
import StrataCore
import StrataHTTP
import StrataServer
import StrataStorage
import SwiftProtobuf

/// Bazel's HTTP cache protocol (`--remote_cache=http://…`), as Bazel's HttpCacheClient and
/// bazel-remote speak it, on an instance's CAS and action cache: the same storage, action cache,
/// authorization, access log and metrics as its gRPC services.
///
/// - `GET /cas/{hash}`: the blob (200, `Content-Length`, `application/octet-stream`), 404 when absent.
///   The size comes from the instance's `BlobSizeIndex`.
/// - `HEAD /cas/{hash}`: 200 with `Content-Length`, or 404.
/// - `PUT /cas/{hash}`: stores the body, streamed and verified against the hash (a mismatch is 400 and
///   stores nothing); `Content-Length` is required (411 without).
/// - `GET /ac/{hash}`, `HEAD /ac/{hash}`: the serialized ActionResult of the action, checked for
///   completeness like GetActionResult (through the instance's action cache), or 404.
/// - `PUT /ac/{hash}`: a serialized ActionResult, decoded and validated like UpdateActionResult.
/// - The same under an instance prefix, `/{instance}/ac/{hash}`; without one, the channel's instance.
///
/// Errors answer the status the gRPC code maps to (`status(for:)`), with the message as a text body.
public struct HTTPCache: Sendable {
    public struct Settings: Sendable {
        /// The instance a path without an instance prefix addresses.
        public var instanceName: String
        /// The largest request body: a larger `PUT` is answered 413 without being read.
        public var maxBodyBytes: Int64

        public static let defaultMaxBodyBytes: Int64 = 64 << 30
        /// An ActionResult body is read into memory: at most this much, whatever `maxBodyBytes` says.
        public static let maxActionResultBytes: Int64 = 16 << 20

        public init(instanceName: String = "", maxBodyBytes: Int64 = Settings.defaultMaxBodyBytes) {
            self.instanceName = instanceName
            self.maxBodyBytes = maxBodyBytes
        }
    }

    public let settings: Settings
    public let registry: InstanceRegistry
    /// Each instance's blob sizes by hash (`BlobSizeIndex`), shared with its decorated CAS and action cache.
    public let sizeIndexes: [String: BlobSizeIndex]
    public let authentication: Authentication?
    public let accessLog: AccessLogInterceptor?
    public let metrics: RPCMetrics?

    public init(
        settings: Settings, registry: InstanceRegistry, sizeIndexes: [String: BlobSizeIndex],
        authentication: Authentication?, accessLog: AccessLogInterceptor?, metrics: RPCMetrics?
    ) {
        self.settings = settings
        self.registry = registry
        self.sizeIndexes = sizeIndexes
        self.authentication = authentication
        self.accessLog = accessLog
        self.metrics = metrics
    }

    /// The listener's routes: every path, for GET, HEAD and PUT (other methods get Hummingbird's 404).
    public var routes: [HTTPRoute] {
        [HTTPRequest.Method.get, .head, .put].map { method in
            HTTPRoute(method, "/**") { request, context in await handle(request, peer: context.peer) }
        }
    }

    enum Kind: String { case ac, cas }

    /// What a request asks for.
    struct Target {
        var kind: Kind
        var instanceName: String
        var hash: String
    }

    /// The name of a request in logs and metrics (`GET /cas`), and the RPC the ACL's `requests` judges
    /// it as: an ACL written for gRPC's reads and writes applies to HTTP's as they are.
    static func names(_ method: HTTPRequest.Method, _ kind: Kind?) -> (log: String, rpc: String) {
        let log = kind.map { "\(method.rawValue) /\($0.rawValue)" } ?? method.rawValue
        let rpc = switch (method, kind) {
        case (.put, .ac?): "UpdateActionResult"
        case (_, .ac?): "GetActionResult"
        case (.put, _): "Write"
        case (.head, _): "FindMissingBlobs"
        default: "Read"
        }
        return (log, rpc)
    }

    /// `/[instance/]ac/{hash}` or `/[instance/]cas/{hash}`.
    func target(_ path: String) throws(StrataError) -> Target {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard segments.count >= 2, let kind = Kind(rawValue: String(segments[segments.endIndex - 2])) else {
            throw .notFound("\(StrataError.echo(path)) is not a cache path: expected /ac/{hash} or /cas/{hash}, optionally under /{instance}/")
        }
        let prefix = segments.dropLast(2).joined(separator: "/")
        return Target(kind: kind, instanceName: prefix.isEmpty ? settings.instanceName : prefix, hash: String(segments.last!))
    }

    /// Answers one request in its own `RequestContext`, logged and measured when its response is over.
    func handle(_ request: Request, peer: String) async -> Response {
        let parsed = Result { () throws(StrataError) in try target(request.uri.path) }
        let names = Self.names(request.method, try? parsed.get().kind)
        let context = StrataCore.RequestContext(service: "http", method: names.log, peer: peer)
        return await StrataCore.RequestContext.$current.withValue(context) {
            if let authentication {
                switch await authentication.authenticate(Self.credentials(request.headers)) {
                case .success(let principal): context.setPrincipal(principal)
                case .failure(let error): context.setAuthenticationFailure(error.message)
                }
            }
            do {
                let target = try parsed.get()
                let instance = try authorizedInstance(target.instanceName, rpc: names.rpc, context: context)
                let response = try await respond(request, target: target, instance: instance)
                return finishing(response, context: context)
            } catch {
                let (status, failure) = Self.failure(error)
                record(failure, context: context)
                return errorResponse(status, failure)
            }
        }
    }

    /// The instance `name`, once the caller may call `rpc` there: authorization first, so that a caller
    /// without credentials learns nothing of which instances exist (as `InstanceRegistry.instance`).
    func authorizedInstance(_ name: String, rpc: String, context: StrataCore.RequestContext) throws(StrataError) -> Instance {
        let instance = registry.instances[name]
        if instance != nil { context.setInstanceName(name) }
        try registry.accessPolicy?.authorize(context, instance: name, method: rpc)
        guard let instance else {
            let known = registry.instances.keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
            throw .invalidArgument("unknown instance name \"\(StrataError.echo(name))\"; this server serves \(known)")
        }
        return instance
    }

    static func credentials(_ headers: HTTPFields) -> RequestCredentials {
        func header(_ name: String) -> String? { HTTPFields.Element.Name(name).flatMap { headers[$0] } }
        return RequestCredentials(
            authorization: headers[.authorization], actorHeader: header("x-request-actor"),
            subjectHeader: header("x-request-subject"), workflowHeader: header("x-request-workflow"),
            clientCertificateSubject: headers[HTTPListener.verifiedClientCertificateHeader])
    }

    func respond(_ request: Request, target: Target, instance: Instance) async throws -> Response {
        let function = try DigestFunction.resolve(protoValue: 0, hashLength: target.hash.utf8.count)
        // The size is not part of the path: validate the hash's characters with size 0.
        let hashOnly = try Digest(hash: target.hash, sizeBytes: 0, function: function)
        switch (target.kind, request.method) {
        case (.cas, .put): return try await putBlob(request, hash: hashOnly, instance: instance)
        case (.cas, _): return try await getBlob(request, hash: hashOnly, headOnly: request.method == .head, instance: instance)
        case (.ac, .put): return try await putActionResult(request, action: hashOnly, instance: instance)
        case (.ac, _): return try await getActionResult(action: hashOnly, headOnly: request.method == .head, instance: instance)
        }
    }

    // MARK: CAS

    func casStore(_ instance: Instance) throws(StrataError) -> Instance.StorageService {
        if let service = instance.cas ?? instance.byteStream { return service }
        throw .unimplemented("instance \"\(StrataError.echo(instance.name))\" has no ContentAddressableStorage service")
    }

    func sizeIndex(_ instance: Instance) -> BlobSizeIndex? { sizeIndexes[instance.name] }

    func getBlob(_ request: Request, hash: Digest, headOnly: Bool, instance: Instance) async throws -> Response {
        let store = try casStore(instance).store
        guard let digest = sizeIndex(instance)?.digest(hash: hash.hash, function: hash.function) else {
            throw StrataError.notFound("blob \(hash.hash) is not in the CAS of instance \"\(StrataError.echo(instance.name))\" (or its size is not known here)")
        }
        var headers: HTTPFields = [.contentType: "application/octet-stream", .contentLength: String(digest.sizeBytes)]
        if headOnly {
            guard try await store.findMissing([digest]).isEmpty else { throw StrataError.notFound("blob \(digest) is not in the CAS") }
            return Response(status: .ok, headers: headers, body: ResponseBody())
        }
        let encoded = try await Self.responseEncoding(store, digest: digest, acceptEncoding: request.headers[.acceptEncoding])
        if let encoding = encoded.contentEncoding {
            headers[.contentEncoding] = encoding
            headers[.contentLength] = nil
        }
        let context = StrataCore.RequestContext.current
        return Response(status: .ok, headers: headers, body: ResponseBody(contentLength: encoded.contentEncoding == nil ? Int(digest.sizeBytes) : nil) { writer in
            for try await chunk in encoded.body {
                context?.addSent(chunk.count)
                try await writer.write(ByteBuffer(bytes: chunk))
            }
            try await writer.finish(nil)
        })
    }

    func putBlob(_ request: Request, hash: Digest, instance: Instance) async throws -> Response {
        let service = try casStore(instance)
        guard !service.readOnly else {
            throw StrataError(.permissionDenied, "the CAS of instance \"\(StrataError.echo(instance.name))\" is read-only")
        }
        let zstd = try Self.isZstd(contentEncoding: request.headers[.contentEncoding])
        guard let lengthText = request.headers[.contentLength], let length = Int64(lengthText), length >= 0 else {
            throw HTTPStatusError(.lengthRequired, .invalidArgument(
                "PUT /cas/{hash} needs a Content-Length header: the blob's size is part of its digest"))
        }
        // A zstd body's Content-Length counts compressed bytes: the blob's size comes in
        // X-Digest-SizeBytes, as bazel-remote defines it.
        var size = length
        if zstd {
            guard let sizeText = request.headers.first(where: { $0.name.canonicalName == Self.digestSizeField })?.value,
                  let declared = Int64(sizeText), declared >= 0 else {
                throw StrataError.invalidArgument(
                    "PUT /cas/{hash} with Content-Encoding: zstd needs an X-Digest-SizeBytes header with the blob's uncompressed size")
            }
            guard length <= Zstd.maximumCompressedSize(ofUncompressed: declared) else {
                throw StrataError.invalidArgument(
                    "a zstd body of \(length) bytes is larger than any zstd frame of a \(declared)-byte blob")
            }
            size = declared
        }
        try checkBodySize(size, instance: instance)
        let digest = try Digest(hash: hash.hash, sizeBytes: size, function: hash.function)
        var body = Self.blobBody(request.body)
        if zstd {
            body = body.zstdDecompressed(expectedSize: size, subject: "the zstd body of PUT /cas/\(digest.hash)")
        }
        // The store verifies the hash and size as the body streams in and commits nothing that does not match.
        try await service.store.write(digest, body: body)
        sizeIndex(instance)?.record(digest)
        return Response(status: .ok, headers: [.contentLength: "0"], body: ResponseBody())
    }

    func checkBodySize(_ length: Int64, instance: Instance) throws(StrataError) {
        let limit = min(settings.maxBodyBytes, instance.maximumBlobSize ?? .max)
        guard length <= limit else {
            throw .resourceExhausted("the body has \(length) bytes; this server accepts at most \(limit)")
        }
    }

    /// The request's body as a `BlobBody`, counted on the request's context as it is read. Read once.
    static func blobBody(_ body: RequestBody) -> BlobBody {
        let context = StrataCore.RequestContext.current
        return BlobBody {
            var iterator = body.makeAsyncIterator()
            return BlobBody.AsyncIterator {
                guard let buffer = try await iterator.next() else { return nil }
                context?.addReceived(buffer.readableBytes)
                return Data(buffer: buffer)
            }
        }
    }

    // MARK: Content-Encoding

    /// bazel-remote's header for the uncompressed size of a `Content-Encoding: zstd` PUT (lower case:
    /// HTTP field names compare case-insensitively).
    static let digestSizeField = "x-digest-sizebytes"

    /// Whether a request body is zstd (true) or identity (false); any other encoding is refused (415)
    /// and nothing is stored.
    static func isZstd(contentEncoding: String?) throws(HTTPStatusError) -> Bool {
        guard let encoding = contentEncoding?.trimmingCharacters(in: .whitespaces).lowercased(), encoding != "identity", !encoding.isEmpty else {
            return false
        }
        if encoding == "zstd" { return true }
        throw HTTPStatusError(.unsupportedMediaType, .invalidArgument(
            "Content-Encoding \"\(StrataError.echo(encoding))\" is not supported: send the body as zstd or unencoded (identity)"))
    }

    /// Whether an `Accept-Encoding` list takes zstd (`zstd`, `zstd;q=0.5`, `*`; not `zstd;q=0`).
    static func acceptsZstd(_ acceptEncoding: String?) -> Bool {
        guard let acceptEncoding else { return false }
        for item in acceptEncoding.split(separator: ",") {
            let parts = item.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard let coding = parts.first, coding == "zstd" || coding == "*" else { continue }
            let quality = parts.dropFirst().first { $0.hasPrefix("q=") }.flatMap { Double($0.dropFirst(2)) } ?? 1
            if quality > 0 { return true }
        }
        return false
    }

    /// The bytes to send for a blob and the `Content-Encoding` that names them (nil: identity, with
    /// the blob's size as `Content-Length`). A client whose `Accept-Encoding` takes zstd gets a zstd
    /// frame, as from bazel-remote: the stored frame when the storage keeps the blob compressed at rest
    /// (verified as it streams, like any read), else the blob compressed as it is read. Empty blobs
    /// and blobs under 1 KiB go as they are: a frame would not be smaller.
    static func responseEncoding(
        _ store: any BlobStore, digest: Digest, acceptEncoding: String?
    ) async throws -> (body: BlobBody, contentEncoding: String?) {
        if digest.sizeBytes >= 1024, acceptsZstd(acceptEncoding) {
            if let stored = try await store.readZstd(digest) { return (stored, "zstd") }
            let blob = try await store.read(digest, offset: 0, limit: nil)
            return (blob.zstdCompressed(uncompressedSize: digest.sizeBytes), "zstd")
        }
        return (try await store.read(digest, offset: 0, limit: nil), nil)
    }

    // MARK: Action cache

    func actionCache(_ instance: Instance) throws(StrataError) -> any ActionCache {
        guard let cache = instance.actionCache else {
            throw .unimplemented("instance \"\(StrataError.echo(instance.name))\" has no ActionCache service")
        }
        return cache
    }

    func getActionResult(action: Digest, headOnly: Bool, instance: Instance) async throws -> Response {
        let cache = try actionCache(instance)
        guard let result = try await cache.get(action) else {
            throw StrataError.notFound("no cached result for action \(action.hash)")
        }
        await recordTreeFiles(result, function: action.function, instance: instance)
        let bytes: Data = try result.serializedBytes()
        let headers: HTTPFields = [.contentType: "application/octet-stream", .contentLength: String(bytes.count)]
        if headOnly { return Response(status: .ok, headers: headers, body: ResponseBody()) }
        StrataCore.RequestContext.current?.addSent(bytes.count)
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// The files inside the Trees of a result's output directories, whose sizes Bazel's next requests
    /// (`GET /cas/{hash}` of each file) need after a restart: the Tree blobs are read (as the
    /// completeness check did) and their files recorded in the size index.
    func recordTreeFiles(_ result: ActionResult, function: DigestFunction, instance: Instance) async {
        guard let index = sizeIndex(instance), let store = try? casStore(instance).store else { return }
        for directory in result.outputDirectories where directory.hasTreeDigest {
            guard let tree = try? Digest(hash: directory.treeDigest.hash, sizeBytes: directory.treeDigest.sizeBytes, function: function),
                  tree.sizeBytes <= CompletenessCheckingActionCache.maxTreeBytes,
                  let bytes = try? await store.readAll(tree) else { continue }
            index.recordTree(bytes, function: function)
        }
    }

    func putActionResult(_ request: Request, action: Digest, instance: Instance) async throws -> Response {
        let cache = try actionCache(instance)
        guard cache.allowsUpdates else {
            throw StrataError(.permissionDenied, "the action cache of instance \"\(StrataError.echo(instance.name))\" does not accept updates")
        }
        let limit = min(settings.maxBodyBytes, Settings.maxActionResultBytes)
        if let lengthText = request.headers[.contentLength], let length = Int64(lengthText), length > limit {
            throw StrataError.resourceExhausted("the body has \(length) bytes; an ActionResult here has at most \(limit)")
        }
        guard try !Self.isZstd(contentEncoding: request.headers[.contentEncoding]) else {
            throw HTTPStatusError(.unsupportedMediaType, .invalidArgument(
                "PUT /ac/{hash} takes its ActionResult unencoded: Content-Encoding zstd is for /cas/ (as bazel-remote has it)"))
        }
        let bytes = try await Self.blobBody(request.body).collect(limit: limit)
        let result: ActionResult
        do {
            result = try ActionResult(serializedBytes: bytes)
        } catch {
            throw StrataError.invalidArgument("the body of PUT /ac/\(action.hash) is not a serialized ActionResult: \(error)")
        }
        try ActionCacheService.validate(result, function: action.function)
        try await cache.update(action, result)
        return Response(status: .ok, headers: [.contentLength: "0"], body: ResponseBody())
    }

    // MARK: Answers

    /// Logs and measures the request once its response body has been sent (or failed).
    func finishing(_ response: Response, context: StrataCore.RequestContext) -> Response {
        var response = response
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            do {
                try await StrataCore.RequestContext.$current.withValue(context) {
                    try await body.write(writer)
                }
                record(nil, context: context)
            } catch {
                record(StrataError.from(error), context: context)
                throw error
            }
        }
        return response
    }

    func record(_ error: StrataError?, context: StrataCore.RequestContext) {
        StrataCore.RequestContext.$current.withValue(context) {
            accessLog?.log(error)
            metrics?.record(request: context.method, error: error)
        }
    }

    /// The HTTP status of a failure and what logs and metrics record of it.
    static func failure(_ error: any Error) -> (HTTPResponse.Status, StrataError) {
        if let failure = error as? HTTPStatusError { return (failure.status, failure.error) }
        let failure = StrataError.from(error)
        return (status(for: failure), failure)
    }

    /// The HTTP status of a failure, by its gRPC code.
    static func status(for error: StrataError) -> HTTPResponse.Status {
        switch error.code {
        case .invalidArgument, .failedPrecondition, .outOfRange: .badRequest
        case .notFound: .notFound
        case .unauthenticated: .unauthorized
        case .permissionDenied: .forbidden
        case .resourceExhausted: .contentTooLarge
        case .unimplemented: .notImplemented
        case .unavailable: .serviceUnavailable
        case .deadlineExceeded: .gatewayTimeout
        case .alreadyExists: .conflict
        default: .internalServerError
        }
    }

    func errorResponse(_ status: HTTPResponse.Status, _ error: StrataError) -> Response {
        var headers: HTTPFields = [.contentType: "text/plain; charset=utf-8"]
        if status == .unauthorized { headers[.wwwAuthenticate] = wwwAuthenticate }
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: error.message + "\n")))
    }

    /// The challenge of a 401: Basic for an htpasswd file, Bearer for JWTs.
    var wwwAuthenticate: String {
        if case .jwt? = authentication?.settings.method { return "Bearer realm=\"strata\"" }
        return "Basic realm=\"strata\", charset=\"UTF-8\""
    }
}

/// A failure whose HTTP status is not the one its gRPC code maps to (411, 415); logs and metrics
/// record `error`.
struct HTTPStatusError: Error {
    let status: HTTPResponse.Status
    let error: StrataError

    init(_ status: HTTPResponse.Status, _ error: StrataError) {
        self.status = status
        self.error = error
    }
}
