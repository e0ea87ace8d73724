import CStrataCurl
import Foundation
import NIOPosix
import Synchronization

/// One HTTP exchange, with the whole request body in memory (callers keep it to one part or chunk).
public struct HTTPRequest: Sendable {
    public var method: String
    /// Scheme, host, and an already percent-encoded path and query: libcurl signs them as written.
    public var url: String
    public var headers: [(name: String, value: String)] = []
    public var body: Data?
    /// Bound on the whole exchange: the configured transfer timeout, shortened to the client's deadline.
    public var timeoutSeconds: Double
    /// The exchange fails when no byte moves either way for this long: a hung S3 (connection accepted,
    /// nothing answered) is found in seconds, while a multi-GiB transfer that keeps moving goes on.
    public var stallTimeoutSeconds: Double = 10
    /// Whether `timeoutSeconds` is the client's deadline rather than S3's bound: timing out on it says
    /// the client gave up, not that S3 went silent.
    public var boundedByClientDeadline = false
    /// The largest response body this request accepts; more is a broken or hostile reply.
    public var responseLimit: Int = 1 << 20

    public init(
        method: String, url: String, headers: [(name: String, value: String)] = [], body: Data? = nil,
        timeoutSeconds: Double, stallTimeoutSeconds: Double = 10, boundedByClientDeadline: Bool = false,
        responseLimit: Int = 1 << 20
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeoutSeconds = timeoutSeconds
        self.stallTimeoutSeconds = stallTimeoutSeconds
        self.boundedByClientDeadline = boundedByClientDeadline
        self.responseLimit = responseLimit
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    /// Lower-cased names.
    public var headers: [String: String]
    public var body: Data

    public init(status: Int, headers: [String: String], body: Data) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// A libcurl failure before an HTTP status arrived (connect, send, receive, timeout).
public struct CurlFailure: Error, Sendable {
    public let code: UInt32
    public let message: String

    public init(code: UInt32, message: String) {
        self.code = code
        self.message = message
    }

    /// Failures worth another attempt: the network or the server, not this request.
    public var isTransient: Bool {
        switch CURLcode(rawValue: code) {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_OPERATION_TIMEDOUT,
             CURLE_SEND_ERROR, CURLE_RECV_ERROR, CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE, CURLE_SSL_CONNECT_ERROR,
             CURLE_HTTP2, CURLE_HTTP2_STREAM, CURLE_WEIRD_SERVER_REPLY,
             // A kept-alive connection died mid-upload; the retry sends the body again from its start.
             CURLE_SEND_FAIL_REWIND:
            true
        default:
            false
        }
    }

    public var isCancellation: Bool { CURLcode(rawValue: code) == CURLE_ABORTED_BY_CALLBACK }

    /// A timeout: no progress for the stall time, or the transfer or connect bound reached.
    public var isTimeout: Bool { CURLcode(rawValue: code) == CURLE_OPERATION_TIMEDOUT }
}

/// Runs requests on libcurl easy handles, blocking calls on a thread pool.
///
/// Handles are kept in a small pool between requests: `curl_easy_reset` keeps a handle's live
/// connections, so consecutive requests to one endpoint reuse a kept-alive connection.
public final class CurlTransport: Sendable {
    /// AWS Signature Version 4, done by libcurl (`CURLOPT_AWS_SIGV4`): S3's requests.
    public struct AWSSigning: Sendable {
        public var region: String
        public var accessKey: String
        public var secretKey: String

        public init(region: String, accessKey: String, secretKey: String) {
            self.region = region
            self.accessKey = accessKey
            self.secretKey = secretKey
        }
    }

    private let idleHandles = Mutex<[CurlHandle]>([])
    private let maxIdleHandles: Int
    private let threadPool: NIOThreadPool
    private let signing: AWSSigning?
    private let connectTimeoutSeconds: Double

    /// libcurl's global initialisation is not thread-safe; a `static let` runs it exactly once.
    private static let globalInit: CURLcode = strata_curl_global_init()

    /// `signing` signs every request (S3); nil sends them as they are.
    public init(signing: AWSSigning?, connectTimeoutSeconds: Double, threadPool: NIOThreadPool, maxIdleHandles: Int = 32) {
        _ = Self.globalInit
        self.signing = signing
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.threadPool = threadPool
        self.maxIdleHandles = maxIdleHandles
    }

    /// Performs `request` once. A cancelled task aborts the transfer at libcurl's next progress call.
    public func perform(_ request: HTTPRequest) async throws -> HTTPResponse {
        let state = TransferState(upload: request.body ?? Data(), responseLimit: request.responseLimit)
        return try await withTaskCancellationHandler {
            try await threadPool.runIfActive { () throws -> HTTPResponse in
                let handle = try self.takeHandle()
                defer { self.returnHandle(handle) }
                do {
                    return try self.perform(request, state: state, on: handle)
                } catch let failure as CurlFailure where failure.isTimeout && !request.boundedByClientDeadline {
                    // The path to S3 went silent: the kept-alive connections of the idle handles went
                    // through it too and would each stall a request once more. Closing them makes the
                    // next requests connect afresh.
                    let idle = self.idleHandles.withLock { handles in
                        defer { handles.removeAll() }
                        return handles
                    }
                    withExtendedLifetime(idle) {}
                    throw failure
                }
            }
        } onCancel: {
            state.cancelled.store(true, ordering: .relaxed)
        }
    }

    private func takeHandle() throws -> CurlHandle {
        if let handle = idleHandles.withLock({ $0.popLast() }) { return handle }
        guard let raw = curl_easy_init() else { throw CurlFailure(code: CURLE_FAILED_INIT.rawValue, message: "curl_easy_init failed") }
        return CurlHandle(raw)
    }

    private func returnHandle(_ handle: CurlHandle) {
        idleHandles.withLock { handles in
            if handles.count < maxIdleHandles { handles.append(handle) }
        }
    }

    private func perform(_ request: HTTPRequest, state: TransferState, on handle: CurlHandle) throws -> HTTPResponse {
        let curl = handle.raw
        curl_easy_reset(curl)
        var headerList: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(headerList) }
        // Runs before the list is freed: a handle back in the pool (or cleaned up when the pool is full)
        // keeps no pointer to this transfer's header list, error buffer or state.
        defer { curl_easy_reset(curl) }
        for (name, value) in request.headers {
            headerList = curl_slist_append(headerList, "\(name): \(value)")
        }
        var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        let context = Unmanaged.passUnretained(state).toOpaque()

        let code: CURLcode = errorBuffer.withUnsafeMutableBufferPointer { errorPointer in
            var setup = CURLE_OK
            func set(_ result: CURLcode) { if setup == CURLE_OK { setup = result } }
            set(strata_curl_setopt_string(curl, CURLOPT_URL, request.url))
            set(strata_curl_setopt_pointer(curl, CURLOPT_ERRORBUFFER, errorPointer.baseAddress))
            set(strata_curl_setopt_long(curl, CURLOPT_NOSIGNAL, 1))
            set(strata_curl_setopt_long(curl, CURLOPT_TCP_KEEPALIVE, 1))
            set(strata_curl_setopt_long(curl, CURLOPT_CONNECTTIMEOUT_MS,
                                        milliseconds(min(connectTimeoutSeconds, request.timeoutSeconds))))
            set(strata_curl_setopt_long(curl, CURLOPT_TIMEOUT_MS, milliseconds(request.timeoutSeconds)))
            // Below 1 byte/s for the stall time (whole seconds for libcurl): no progress, the request fails.
            set(strata_curl_setopt_long(curl, CURLOPT_LOW_SPEED_LIMIT, 1))
            set(strata_curl_setopt_long(curl, CURLOPT_LOW_SPEED_TIME, Int(max(1, request.stallTimeoutSeconds.rounded(.up)))))
            if let signing {
                set(strata_curl_setopt_string(curl, CURLOPT_AWS_SIGV4, "aws:amz:\(signing.region):s3"))
                set(strata_curl_setopt_string(curl, CURLOPT_USERNAME, signing.accessKey))
                set(strata_curl_setopt_string(curl, CURLOPT_PASSWORD, signing.secretKey))
            }
            set(strata_curl_setopt_slist(curl, CURLOPT_HTTPHEADER, headerList))
            set(strata_curl_setopt_pointer(curl, CURLOPT_HEADERDATA, context))
            set(strata_curl_setopt_data_callback(curl, CURLOPT_HEADERFUNCTION) { buffer, size, count, context in
                let state = Unmanaged<TransferState>.fromOpaque(context!).takeUnretainedValue()
                let length = size * count
                state.receiveHeader(UnsafeRawBufferPointer(start: buffer, count: length))
                return length
            })
            set(strata_curl_setopt_pointer(curl, CURLOPT_WRITEDATA, context))
            set(strata_curl_setopt_data_callback(curl, CURLOPT_WRITEFUNCTION) { buffer, size, count, context in
                let state = Unmanaged<TransferState>.fromOpaque(context!).takeUnretainedValue()
                let length = size * count
                // Returning less than `length` makes libcurl fail the transfer with CURLE_WRITE_ERROR.
                return state.receiveBody(UnsafeRawBufferPointer(start: buffer, count: length)) ? length : 0
            })
            set(strata_curl_setopt_long(curl, CURLOPT_NOPROGRESS, 0))
            set(strata_curl_setopt_pointer(curl, CURLOPT_XFERINFODATA, context))
            set(strata_curl_setopt_progress_callback(curl) { context, _, _, _, _ in
                let state = Unmanaged<TransferState>.fromOpaque(context!).takeUnretainedValue()
                return state.cancelled.load(ordering: .relaxed) ? 1 : 0
            })
            switch request.method {
            case "GET":
                break
            case "HEAD":
                set(strata_curl_setopt_long(curl, CURLOPT_NOBODY, 1))
            case "PUT", "POST":
                // The upload mode sends exactly our bytes with a Content-Length, and no form Content-Type.
                set(strata_curl_setopt_long(curl, CURLOPT_UPLOAD, 1))
                set(strata_curl_setopt_off_t(curl, CURLOPT_INFILESIZE_LARGE, curl_off_t(state.upload.count)))
                set(strata_curl_setopt_pointer(curl, CURLOPT_READDATA, context))
                set(strata_curl_setopt_data_callback(curl, CURLOPT_READFUNCTION) { buffer, size, count, context in
                    let state = Unmanaged<TransferState>.fromOpaque(context!).takeUnretainedValue()
                    return state.send(into: UnsafeMutableRawBufferPointer(start: buffer, count: size * count))
                })
                if request.method == "POST" { set(strata_curl_setopt_string(curl, CURLOPT_CUSTOMREQUEST, "POST")) }
            default:
                set(strata_curl_setopt_string(curl, CURLOPT_CUSTOMREQUEST, request.method))
            }
            guard setup == CURLE_OK else { return setup }
            return curl_easy_perform(curl)
        }
        guard code == CURLE_OK else {
            let detail = String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let message = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            if code == CURLE_WRITE_ERROR, state.overflowed {
                throw CurlFailure(code: code.rawValue, message: "the response was larger than the \(request.responseLimit) bytes expected")
            }
            throw CurlFailure(code: code.rawValue, message: message)
        }
        var status = 0
        _ = strata_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: state.headers, body: state.received)
    }

    private func milliseconds(_ seconds: Double) -> Int {
        Int(min(max(seconds, 0.001) * 1000, Double(Int32.max)))
    }
}

/// An easy handle, owned by one request at a time (it leaves the pool while in use).
final class CurlHandle: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer

    init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }

    deinit { curl_easy_cleanup(raw) }
}

/// What libcurl's callbacks read and write during one transfer. Only the transfer's thread touches it,
/// except `cancelled`, which the cancelling task sets.
final class TransferState: @unchecked Sendable {
    let upload: Data
    private var uploadOffset = 0
    let responseLimit: Int
    private(set) var received = Data()
    private(set) var headers: [String: String] = [:]
    private(set) var overflowed = false
    let cancelled = Atomic<Bool>(false)

    init(upload: Data, responseLimit: Int) {
        self.upload = upload
        self.responseLimit = responseLimit
    }

    func send(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(buffer.count, upload.count - uploadOffset)
        guard count > 0 else { return 0 }
        let start = upload.startIndex + uploadOffset
        upload.copyBytes(to: buffer.bindMemory(to: UInt8.self), from: start..<(start + count))
        uploadOffset += count
        return count
    }

    func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard received.count + bytes.count <= responseLimit else {
            overflowed = true
            return false
        }
        // One allocation of the expected size (a ranged GET's limit is its length), not repeated doublings.
        if received.isEmpty { received.reserveCapacity(min(responseLimit, 16 << 20)) }
        received.append(contentsOf: bytes)
        return true
    }

    func receiveHeader(_ bytes: UnsafeRawBufferPointer) {
        let line = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if line.hasPrefix("HTTP/") {
            // A new status line (after "100 Continue" or a retry): only the final response's headers count.
            headers = [:]
            received = Data()
            return
        }
        guard let colon = line.firstIndex(of: ":") else { return }
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        headers[name] = value
    }
}
