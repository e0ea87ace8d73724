import Foundation
import Testing

/// The `strata` executable as an operator runs it (built by `swift build --build-tests`): its version,
/// and errors in words rather than Swift's names.
@Suite struct CommandLineTests {
    let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("strata-cli-\(UUID().uuidString)").path

    /// Runs `strata` with `arguments` and a private HOME; its exit status, standard output and error.
    func strata(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
        let binary = "\(root)/.build/debug/strata"
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw CommandLineTestError("\(binary) is not built: run swift build --build-tests first")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = ["HOME": scratch, "PATH": "/usr/bin:/bin"]
        let output = Pipe(), error = Pipe()
        process.standardOutput = output
        process.standardError = error
        try process.run()
        let outData = output.fileHandleForReading.readDataToEndOfFile()
        let errData = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    @Test func versionIsPrinted() throws {
        let result = try strata(["--version"])
        #expect(result.status == 0)
        #expect(result.output.wholeMatch(of: /strata \d+\.\d+\.\d+\n/) != nil, "\(result.output)")
    }

    @Test func aBadArgumentIsSaidInWords() throws {
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let result = try strata(["serve", "--address", "nonsense"])
        #expect(result.status == 1)
        #expect(result.error.hasPrefix("strata: address \"nonsense\" is not host:port"), "\(result.error)")
        #expect(result.error.contains("(invalid argument)"), "\(result.error)")
        #expect(!result.error.contains("invalidArgument"), "\(result.error)")
    }

    @Test func anErrorACommandLetsThroughIsSaidInWords() throws {
        // Nothing listens on port 1: the bench's first call fails with UNAVAILABLE.
        let result = try strata(["bench", "--target", "127.0.0.1:1", "--scenario", "ac", "--duration", "1", "--max-operations", "1"])
        #expect(result.status != 0)
        #expect(result.error.contains("(unavailable)"), "\(result.error)")
        #expect(!result.error.contains("unavailable:"), "\(result.error)")
    }

    @Test func configCheckSuggestsTheKeyMeant() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let file = "\(scratch)/typo.yml"
        try Data("server: [!channel {adress: \"127.0.0.1:1\"}]\ninstances: [{name: \"\", services: []}]\n".utf8)
            .write(to: URL(fileURLWithPath: file))
        let result = try strata(["config", "check", file])
        #expect(result.status == 1)
        #expect(result.error.hasPrefix("\(file):1: server[0].adress: unknown option \"adress\" (did you mean \"address\"?)"), "\(result.error)")
    }

    /// `config check` and `serve` both print every problem of a file, a line each, then the count; the
    /// service naming the storage that failed adds nothing.
    @Test func configCheckAndServeReportEveryProblem() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let file = "\(scratch)/three.yml"
        try Data("""
            server: [!channel {address: "127.0.0.1:0", idle-timeout: never}]
            storages: [!lru-storage &cas {size: lots}]
            instances: [{name: "", services: [!cas {storage: *cas}, !action-cache {}]}]
            """.utf8).write(to: URL(fileURLWithPath: file))
        let expected = [
            "\(file):1: server[0].idle-timeout: expected a number of seconds",
            "\(file):2: storages[0].size: \"lots\" is not a size: use bytes or a number with K, M, G or T (binary), e.g. 2048M",
            "\(file):3: instances[0].services[1]: !action-cache needs a cache",
            "3 problems in \(file)",
        ]
        let check = try strata(["config", "check", file])
        #expect(check.status == 1)
        #expect(check.error.split(separator: "\n").map(String.init) == expected, "\(check.error)")
        let serve = try strata(["serve", file])
        #expect(serve.status == 1)
        #expect(serve.error.split(separator: "\n").map(String.init) == expected.map { "strata: \($0)" }, "\(serve.error)")
    }
}

struct CommandLineTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
