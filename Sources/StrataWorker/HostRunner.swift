import Foundation
import StrataAPI
import StrataCore
import StrataProto
#if canImport(Glibc)
import Glibc
#endif

/// `--runner host`: runs the command directly on this machine, as the worker's user, in the action's
/// own directory (the input root, hard-linked from the cache) with the Command's arguments, environment
/// and working directory. It is NOT a sandbox: the command sees the whole host (its tools, files and
/// network) and can change anything the worker's user can; use it for trusted builds only, or
/// `--runner buildbox-run` for isolation.
public struct HostRunner: Runner {
    public let context: RunnerContext
    public var name: String { "host" }

    public init(context: RunnerContext) {
        self.context = context
    }

    public func run(_ job: RunnerJob) async throws -> RunnerOutcome {
        var result = ActionResult()
        var metadata = ExecutedActionMetadata()
        let function = job.actionDigest.function
        let command = try await context.message(
            Command.self, try Digest(job.action.commandDigest, function: function), what: "the Action's Command")
        let inputRoot = job.directory + "/root"
        let stdoutPath = job.directory + "/stdout", stderrPath = job.directory + "/stderr"
        guard mkdir(inputRoot, 0o755) == 0 else { throw StrataError.internal("\(inputRoot): \(String(cString: strerror(errno)))") }
        guard FileManager.default.createFile(atPath: stdoutPath, contents: nil), FileManager.default.createFile(atPath: stderrPath, contents: nil) else {
            throw StrataError.internal("\(job.directory): cannot create the stdout and stderr files")
        }

        metadata.inputFetchStartTimestamp = .now
        _ = try await InputStager(store: context.store, cache: context.cache)
            .stage(root: try Digest(job.action.inputRootDigest, function: function), into: inputRoot)
        metadata.inputFetchCompletedTimestamp = .now

        let workingDirectory = try Self.workingDirectory(command.workingDirectory, in: inputRoot)
        // The directories of the outputs exist before the command runs, as the REAPI promises.
        let outputs = command.outputPaths.isEmpty ? command.outputFiles + command.outputDirectories : command.outputPaths
        for output in outputs {
            try OutputCollector.checkOutputPath(output)
            if let slash = output.lastIndex(of: "/") {
                try? FileManager.default.createDirectory(atPath: workingDirectory + "/" + output[..<slash], withIntermediateDirectories: true)
            }
        }
        var environment: [String: String] = [:]
        for variable in command.environmentVariables { environment[variable.name] = variable.value }

        metadata.executionStartTimestamp = .now
        let process = try ProcessGroup(
            arguments: command.arguments, environment: environment, directory: workingDirectory,
            stdoutPath: stdoutPath, stderrPath: stderrPath)
        let termination = await process.wait(timeout: job.timeout)
        metadata.executionCompletedTimestamp = .now
        try Task.checkCancellation()

        var status = Google_Rpc_Status()
        switch termination {
        case .exited(let code): result.exitCode = code
        case .signaled(let signal): result.exitCode = 128 + signal
        case .timedOut:
            result.exitCode = 128 + SIGKILL
            status.code = Int32(StrataError.Code.deadlineExceeded.rawValue)
            status.message = "the action ran past its timeout of \(job.timeout.map { "\($0)" } ?? "?") and was killed"
        case .cancelled:
            throw CancellationError()
        }

        metadata.outputUploadStartTimestamp = .now
        try await OutputCollector(store: context.store, function: function).collect(
            command, workingDirectory: workingDirectory, stdoutPath: stdoutPath, stderrPath: stderrPath, into: &result)
        metadata.outputUploadCompletedTimestamp = .now
        result.executionMetadata = metadata
        return RunnerOutcome(result: result, status: status)
    }

    /// The Command's working directory, inside the input root (created when the tree lacks it).
    static func workingDirectory(_ relative: String, in root: String) throws(StrataError) -> String {
        guard !relative.hasPrefix("/"), !relative.split(separator: "/").contains("..") else {
            throw .invalidArgument("working directory \(StrataError.echo(relative)) is not a relative path inside the input root")
        }
        guard !relative.isEmpty else { return root }
        let path = root + "/" + relative
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
