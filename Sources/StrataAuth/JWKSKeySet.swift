import Foundation
import JWTKit
import Logging
import ServiceLifecycle
import StrataCore
import StrataHTTPClient
import NIOPosix
import Synchronization

/// The keys of `jwks-url`: every URL's JWK Set, fetched when serving starts, then every `refresh`, and
/// again when a token names a key id none of them has (at most once per `unknownKeyRefetchInterval`,
/// so that tokens with made-up key ids cannot make the server hammer the issuer). Loading the
/// configuration fetches nothing.
///
/// A URL that fails (unreachable, not a JWK Set) keeps the keys of its last good fetch; a key jwt-kit
/// cannot use (no `kid`, an unsupported type) is skipped with a warning, not the whole set.
public final class JWKSKeySet: Service, Sendable {
    public typealias Fetch = @Sendable (_ url: String) async throws -> Data

    public let urls: [String]
    public let refresh: Duration
    private let fetch: Fetch
    private let logger: Logger
    public static let unknownKeyRefetchInterval: Duration = .seconds(30)

    private struct State {
        /// The last good JWK Set of each URL: one URL failing keeps its last keys and loses no other's.
        var sets: [String: JWKS] = [:]
        /// Why each URL's last fetch failed, if it did.
        var failures: [String: String] = [:]
        /// Every set's keys, rebuilt after each fetch.
        var keys: JWTKeyCollection?
        var kids: Set<String> = []
        /// When a token's unknown key id last made a fetch.
        var lastUnknownKeyFetch: ContinuousClock.Instant?
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
        let (kids, failures) = state.withLock { ($0.kids, $0.failures) }
        let failure = failures.isEmpty ? nil : failures.keys.sorted().map { "\($0): \(failures[$0]!)" }.joined(separator: "; ")
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
        var fetched: [String: JWKS] = [:]
        var failures: [String: String] = [:]
        for url in urls {
            let data: Data
            do {
                data = try await fetch(url)
            } catch {
                failures[url] = "cannot fetch it: \((error as? StrataError)?.message ?? (error as? CurlFailure)?.message ?? "\(error)")"
                continue
            }
            do {
                fetched[url] = try JSONDecoder().decode(JWKS.self, from: data)
            } catch {
                failures[url] = "not a JWK Set: \(error)"
            }
        }
        let sets = state.withLock { state in
            for (url, set) in fetched {
                state.sets[url] = set
                state.failures[url] = nil
            }
            state.failures.merge(failures) { _, new in new }
            return state.sets
        }
        for (url, failure) in failures.sorted(by: { $0.key < $1.key }) {
            logger.warning("jwks-url \(url): \(failure); keeping its keys of the last good fetch")
        }

        let collection = JWTKeyCollection()
        var kids: Set<String> = []
        for url in urls {
            for key in sets[url]?.keys ?? [] {
                guard let kid = key.keyIdentifier?.string else {
                    logger.warning("jwks-url \(url): a key without kid is skipped (tokens select keys by kid)")
                    continue
                }
                do {
                    try await collection.add(jwk: key)
                    kids.insert(kid)
                } catch {
                    logger.warning("jwks-url \(url): key \"\(kid)\" is skipped: \(error)")
                }
            }
        }
        state.withLock {
            $0.keys = collection
            $0.kids = kids
        }
        if !fetched.isEmpty {
            logger.info("jwks-url: \(kids.count) key(s) from \(urls.joined(separator: ", "))")
        }
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
