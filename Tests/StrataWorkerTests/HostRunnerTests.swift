import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
import SwiftProtobuf
import Testing
@testable import StrataWorker

@Suite("Host runner")
struct HostRunnerTests {
    @Test("arguments, environment and working directory; stdout and stderr uploaded; exit code kept")
    func commandLine() async throws {
        try await withWorkerFixture { fixture in
            let command = shellCommand(
                "echo \"$GREETING from $(basename \"$PWD\")\"; echo oops >&2; exit 3",
                environment: ["GREETING": "hello"], workingDirectory: "sub/dir")
            let (action, digest) = try await fixture.action(command)
            let outcome = try await HostRunner(context: fixture.context).run(try fixture.job(action, digest))
            #expect(outcome.status.code == 0)
            #expect(outcome.result.exitCode == 3)
            #expect(String(decoding: try await fixture.fetch(outcome.result.stdoutDigest), as: UTF8.self) == "hello from dir\n")
            #expect(String(decoding: try await fixture.fetch(outcome.result.stderrDigest), as: UTF8.self) == "oops\n")
            let metadata = outcome.result.executionMetadata
            #expect(metadata.hasInputFetchStartTimestamp && metadata.hasExecutionCompletedTimestamp && metadata.hasOutputUploadCompletedTimestamp)
        }
    }

    @Test("output_paths: files, directories as Trees, symlinks, executable bits; a missing output is absent")
    func outputPaths() async throws {
        try await withWorkerFixture { fixture in
            let script = """
                mkdir -p out/d/sub && echo hi > out/f && chmod +x out/f && ln -s f out/l && \
                echo g > out/d/sub/g && ln -s sub out/d/s && : > out/d/empty && mkdir out/d/emptydir
                """
            let command = shellCommand(script, outputPaths: ["out/d", "out/f", "out/l", "out/missing"])
            let (action, digest) = try await fixture.action(command)
            let result = try await HostRunner(context: fixture.context).run(try fixture.job(action, digest)).result
            #expect(result.exitCode == 0)
            #expect(result.outputFiles.map(\.path) == ["out/f"])
            #expect(result.outputFiles.first?.isExecutable == true)
            #expect(String(decoding: try await fixture.fetch(result.outputFiles[0].digest), as: UTF8.self) == "hi\n")
            #expect(result.outputSymlinks.map { "\($0.path)->\($0.target)" } == ["out/l->f"])
            #expect(result.outputDirectories.map(\.path) == ["out/d"])
            let tree = try Tree(serializedBytes: try await fixture.fetch(result.outputDirectories[0].treeDigest))
            #expect(tree.root.directories.map(\.name) == ["emptydir", "sub"])
            #expect(tree.root.files.map(\.name) == ["empty"])
            #expect(tree.root.symlinks.map { "\($0.name)->\($0.target)" } == ["s->sub"])
            #expect(tree.children.count == 2)
            let sub = try #require(tree.children.first { $0.files.map(\.name) == ["g"] })
            #expect(String(decoding: try await fixture.fetch(sub.files[0].digest), as: UTF8.self) == "g\n")
            // root_directory_digest names the root Directory, stored with every Directory under it, so
            // a client can walk the output from it instead of reading the Tree.
            let root = try Build_Bazel_Remote_Execution_V2_Directory(serializedBytes: try await fixture.fetch(result.outputDirectories[0].rootDirectoryDigest))
            #expect(root == tree.root)
            for child in root.directories {
                let stored = try Build_Bazel_Remote_Execution_V2_Directory(serializedBytes: try await fixture.fetch(child.digest))
                #expect(tree.children.contains(stored), "\(child.name)'s Directory is not the Tree's")
            }
        }
    }

    @Test("the older output_files / output_directories, with their own symlink fields")
    func olderOutputFields() async throws {
        try await withWorkerFixture { fixture in
            var command = shellCommand("mkdir -p d && echo f > f && ln -s f lf && ln -s d ld && echo x > d/x")
            command.outputFiles = ["f", "lf", "nothing"]
            command.outputDirectories = ["d", "ld"]
            let (action, digest) = try await fixture.action(command)
            let result = try await HostRunner(context: fixture.context).run(try fixture.job(action, digest)).result
            #expect(result.outputFiles.map(\.path) == ["f"])
            #expect(result.outputFiles.first?.isExecutable == false)
            #expect(result.outputDirectories.map(\.path) == ["d"])
            #expect(result.outputFileSymlinks.map { "\($0.path)->\($0.target)" } == ["lf->f"])
            #expect(result.outputDirectorySymlinks.map { "\($0.path)->\($0.target)" } == ["ld->d"])
            #expect(result.outputSymlinks.isEmpty)
        }
    }

    @Test("Action.timeout kills the whole process group: DEADLINE_EXCEEDED with the output so far, a background child gone too")
    func timeoutKillsGroup() async throws {
        try await withWorkerFixture { fixture in
            let command = shellCommand("sleep 300 & echo $!; echo started >&2; sleep 300")
            let (action, digest) = try await fixture.action(command, timeout: .seconds(1))
            let started = ContinuousClock.now
            let outcome = try await HostRunner(context: fixture.context).run(try fixture.job(action, digest, timeout: .seconds(1)))
            #expect(ContinuousClock.now - started < .seconds(60))
            #expect(outcome.status.code == 4)
            let child = pid_t(String(decoding: try await fixture.fetch(outcome.result.stdoutDigest), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines))
            #expect(String(decoding: try await fixture.fetch(outcome.result.stderrDigest), as: UTF8.self) == "started\n")
            let pid = try #require(child)
            #expect(await processIsGone(pid), "the background child \(pid) still runs")
        }
    }

    @Test("cancelling the run (a cancelled lease) kills the command's process group")
    func cancellationKillsGroup() async throws {
        try await withWorkerFixture { fixture in
            let command = shellCommand("sleep 300 & echo $!; sleep 300")
            let (action, digest) = try await fixture.action(command)
            let job = try fixture.job(action, digest)
            let runner = HostRunner(context: fixture.context)
            let task = Task { try await runner.run(job) }
            // The child's pid, once the command has written it.
            var child: pid_t?
            for _ in 0..<400 where child == nil {
                try await Task.sleep(for: .milliseconds(25))
                child = contents(job.directory + "/stdout").flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            }
            let pid = try #require(child)
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(await processIsGone(pid), "the background child \(pid) still runs")
        }
    }

    @Test("a program that cannot be found is INVALID_ARGUMENT naming it")
    func missingProgram() async throws {
        try await withWorkerFixture { fixture in
            let command = Command.with { $0.arguments = ["no-such-program-here"] }
            let (action, digest) = try await fixture.action(command)
            let error = await #expect(throws: StrataError.self) {
                try await HostRunner(context: fixture.context).run(try fixture.job(action, digest))
            }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("no-such-program-here") == true)
        }
    }
}
