import Foundation

/// Certificates made by the `openssl` command for one test, in a folder of their own: CAs, server
/// certificates for 127.0.0.1 and localhost, client certificates. EC P-256 keys (fast to make), PEM.
public final class TestCertificates: Sendable {
    public let directory: String

    public init() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("strata-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    public func path(_ file: String) -> String { "\(directory)/\(file)" }

    /// A self-signed CA: `NAME.key`, `NAME.pem`.
    public func makeAuthority(_ name: String) throws {
        try openssl(["req", "-x509", "-subj", "/CN=\(name)"] + newKey(name))
    }

    /// A server certificate for 127.0.0.1 and localhost signed by `authority`: `NAME.key`, `NAME.pem`.
    public func makeServer(_ name: String, signedBy authority: String, commonName: String = "strata-server") throws {
        try openssl(["req", "-x509", "-subj", "/O=Strata Tests/CN=\(commonName)"] + newKey(name) + signed(by: authority) + [
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-addext", "extendedKeyUsage=serverAuth",
        ])
    }

    /// A client certificate signed by `authority`: `NAME.key`, `NAME.pem`.
    public func makeClient(_ name: String, signedBy authority: String, subject: String) throws {
        try openssl(["req", "-x509", "-subj", subject] + newKey(name) + signed(by: authority) + [
            "-addext", "extendedKeyUsage=clientAuth",
        ])
    }

    /// Puts `source`'s key and certificate where `target`'s are, each by an atomic rename, as a
    /// certificate renewal does.
    public func replace(_ target: String, with source: String) throws {
        for suffix in [".key", ".pem"] {
            let staged = path("\(target)\(suffix).new")
            try? FileManager.default.removeItem(atPath: staged)
            try FileManager.default.copyItem(atPath: path(source + suffix), toPath: staged)
            guard rename(staged, path(target + suffix)) == 0 else {
                throw CertificateError(message: "cannot rename \(staged): errno \(errno)")
            }
        }
    }

    private func newKey(_ name: String) -> [String] {
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-keyout", path("\(name).key"), "-out", path("\(name).pem")]
    }

    private func signed(by authority: String) -> [String] {
        ["-CA", path("\(authority).pem"), "-CAkey", path("\(authority).key"), "-addext", "basicConstraints=critical,CA:FALSE"]
    }

    private func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let output = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw CertificateError(message: "openssl \(arguments.joined(separator: " ")): \(String(decoding: output, as: UTF8.self))")
        }
    }

    public struct CertificateError: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }
}
