import Foundation
import JWTKit
import Logging
import ServiceLifecycle
import StrataCore
import StrataHTTP
import NIOPosix
import Synchronization

/// The keys of `jwks-url`: every URL's JWK Set, fetched when serving starts, then every `refresh`, and
/// again when a token names a key id none of them has (at most once per `unknownKeyRefetchInterval`,
/// so that tokens with made-up key ids cannot make the server hammer the issuer). Loading the
/// configuration fetches nothing.
///
/// A failed fetch keeps the keys of the last good one.
public final class JWKSKeySet: Service, Sendable {
    public typealias Fetch = @Sendable (_ url: String) async throws -> Data

    public let urls: [String]
    public let refresh: Duration
    private let fetch: Fetch
    private let logger: Logger
    public static let unknownKeyRefetchInterval: Duration = .seconds(30)

    private struct State {
        var keys: JWTKeyCollection?
        var kids: Set<String> = []
        /// When a token's unknown key id last made a fetch.
        var lastUnknownKeyFetch: ContinuousClock.Instant?
        var lastFailure: String?
    }
    private let state = Mutex(State())

    /// `fetch` reads one URL (by default over HTTP(S) with libcurl).
    public init(urls: [String], refresh: Duration, fetch: Fetch? = nil, logger: Logger = Logger(label: "strata.auth")) {
        self.urls = urls
        self.refresh = refresh
        self.fetch = fetch ?? Self.httpFetch()
        self.logger = logger
    }

    /// Fetches every `refresh` until cancelled or the server shuts down.
    public func run() async {
        while !Task.isCancelled {
            await refetch()
            guard (try? await cancelWhenGracefulShutdown({ try await Task.sleep(for: self.refresh) })) != nil else { return }
        }
    }

    /// The keys of the last good fetch, nil before one.
    public var keys: JWTKeyCollection? { state.withLock { $0.keys } }

    /// Whether the fetched keys include this key id (a token verified by a JWKS must name its key).
    func has(kid: String?) -> Bool {
        guard let kid else { return false }
        return state.withLock { $0.kids.contains(kid) }
    }

    func unknownKeyMessage(kid: String?) -> String {
        let (kids, failure) = state.withLock { ($0.kids, $0.lastFailure) }
        let known = kids.isEmpty ? "no keys" : "key ids \(kids.sorted().map { "\"\($0)\"" }.joined(separator: ", "))"
        return "unknown key id \(kid.map { "\"\(StrataError.echo($0))\"" } ?? "(none)"): the JWKS at \(urls.joined(separator: ", ")) has \(known)"
            + (failure.map { " (last fetch failed: \($0))" } ?? "")
    }

    /// Fetches now unless an unknown key id made a fetch less than `unknownKeyRefetchInterval` ago
    /// (the scheduled fetches do not count: a key rotated just after one is picked up at once).
    func refetchForUnknownKey() async {
        let now = ContinuousClock.now
        let due = state.withLock { state in
            if let last = state.lastUnknownKeyFetch, now - last < Self.unknownKeyRefetchInterval { return false }
            state.lastUnknownKeyFetch = now
            return true
        }
        if due { await refetch() }
    }

    /// Fetches every URL now and replaces the keys when all succeed.
    public func refetch() async {
        let collection = JWTKeyCollection()
        var kids: Set<String> = []
        do {
            for url in urls {
                let data: Data
                do {
                    data = try await fetch(url)
                } catch {
                    throw StrataError.unavailable("cannot fetch \(url): \(error)")
                }
                let jwks: JWKS
                do {
                    jwks = try JSONDecoder().decode(JWKS.self, from: data)
                    try await collection.add(jwks: jwks)
                } catch {
                    throw StrataError.invalidArgument("\(url) is not a JWK Set: \(error)")
                }
                for key in jwks.keys { if let kid = key.keyIdentifier?.string { kids.insert(kid) } }
            }
        } catch {
            let message = (error as? StrataError)?.message ?? "\(error)"
            logger.warning("jwks-url: \(message); keeping the keys of the last good fetch")
            state.withLock { $0.lastFailure = message }
            return
        }
        state.withLock {
            $0.keys = collection
            $0.kids = kids
            $0.lastFailure = nil
        }
        logger.info("jwks-url: \(kids.count) key(s) from \(urls.joined(separator: ", "))")
    }

    /// GET over HTTP(S) with the shared libcurl client; a JWK Set is small (at most 1 MiB accepted).
    static func httpFetch() -> Fetch {
        let transport = CurlTransport(signing: nil, connectTimeoutSeconds: 5, threadPool: NIOThreadPool.singleton)
        return { url in
            let response = try await transport.perform(HTTPRequest(method: "GET", url: url, timeoutSeconds: 15))
            guard response.status == 200 else { throw StrataError.unavailable("HTTP status \(response.status)") }
            return response.body
        }
    }
}
