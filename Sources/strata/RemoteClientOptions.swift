import ArgumentParser
import Foundation
import StrataCore
import StrataRemote

/// The options every client command (`strata cas`, `strata ac`, `strata capabilities`) shares: which
/// server, which instance, TLS files and a token.
struct RemoteClientOptions: ParsableArguments {
    @Option(help: "The server: grpc://HOST:PORT, grpcs://HOST:PORT (TLS) or unix:/PATH.")
    var remote = "grpc://127.0.0.1:50051"

    @Option(help: "The instance name.")
    var instance = ""

    @OptionGroup var credentialOptions: RemoteCredentialOptions

    @Option(help: "The digest function of the digests given and computed: sha256, sha1, sha384, sha512 or blake3.")
    var digestFunction = "sha256"

    /// `--digest-function`, one this build computes.
    func function() throws -> DigestFunction {
        guard let function = DigestFunction(name: digestFunction), DigestFunction.supported.contains(function) else {
            throw ValidationError("--digest-function \(digestFunction) is not one of \(DigestFunction.supported.map(\.name).joined(separator: ", "))")
        }
        return function
    }

    /// Runs `body` with a channel to the server, open for its duration.
    func withChannel<T: Sendable>(_ body: (RemoteChannel) async throws -> T) async throws -> T {
        var options = RemoteChannel.Options()
        options.instanceName = instance
        options.credentials = credentialOptions.credentials
        options.requestMetadata = ClientCommandInput.requestMetadata(version: strataVersion)
        // A command moves whole trees: its uploads and downloads are bounded by the transfer, not a timeout.
        options.requestTimeout = .seconds(300)
        let channel = try RemoteChannel(url: remote, options: options)
        let running = Task { try await channel.run() }
        defer {
            channel.shutdown()
            running.cancel()
        }
        return try await body(channel)
    }
}

/// How a client proves who it is and checks the server: TLS files and a bearer token, shared by the
/// client commands and `strata worker`.
struct RemoteCredentialOptions: ParsableArguments {
    @Option(name: .customLong("tls-ca"), help: "PEM certificates that sign the server's (default: the system's roots).")
    var tlsCA: String?

    @Option(help: "PEM client certificate, for mutual TLS (with --tls-client-key).")
    var tlsClientCert: String?

    @Option(help: "PEM private key of the client certificate.")
    var tlsClientKey: String?

    @Option(help: "A bearer token, sent as 'authorization: Bearer TOKEN'.")
    var token: String?

    @Option(help: "A file holding the bearer token.")
    var tokenFile: String?

    var credentials: RemoteCredentials {
        RemoteCredentials(tlsCAFile: tlsCA, tlsClientCertFile: tlsClientCert, tlsClientKeyFile: tlsClientKey, token: token, tokenFile: tokenFile)
    }
}

/// A progress bar on standard error, drawn only when standard error is a terminal and the transfer is
/// long enough to want one; nothing otherwise, so scripts and logs see only the results.
enum ProgressBar {
    static let minimumBytes: Int64 = 16 << 20

    static func make(_ label: String, totalBytes: Int64) -> TransferProgress? {
        guard totalBytes >= minimumBytes, isatty(STDERR_FILENO) == 1 else { return nil }
        let lastDrawn = LastDrawn()
        return TransferProgress(totalBytes: totalBytes) { done, total in
            let percent = Int(done * 100 / max(total, 1))
            guard lastDrawn.advance(to: percent) else { return }
            let width = 30, filled = width * percent / 100
            let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
            let line = "\r\(label) [\(bar)] \(percent)% \(done >> 20)/\(total >> 20) MiB" + (done >= total ? "\n" : "")
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    /// The last percentage drawn: the bar is redrawn when it changes, not for every chunk.
    final class LastDrawn: @unchecked Sendable {
        private let lock = NSLock()
        private var percent = -1

        func advance(to percent: Int) -> Bool {
            lock.lock()
            defer { lock.unlock() }
            guard percent != self.percent else { return false }
            self.percent = percent
            return true
        }
    }
}

func parseDigest(_ text: String, _ options: RemoteClientOptions) throws -> Digest {
    let function = try options.function()
    do {
        return try ClientCommandInput.digest(text, function: function)
    } catch {
        throw ValidationError(error.message)
    }
}
