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
}

struct CommandLineTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
