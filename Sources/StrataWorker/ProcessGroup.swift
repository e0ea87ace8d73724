import Foundation
import StrataCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A command started in a process group of its own, so that everything it starts can be killed at
/// once: when its timeout passes, when its lease is cancelled, and after it exits (a background
/// child left behind would hold the action's files and keep running on the worker).
final class ProcessGroup: Sendable {
    enum Termination: Sendable, Equatable {
        case exited(Int32)
        /// Killed by a signal it did not get from us.
        case signaled(Int32)
        /// Killed by us because `timeout` passed.
        case timedOut
        /// Killed by us because the task running it was cancelled (a cancelled lease).
        case cancelled
    }

    /// The process group's id: the leader's pid.
    let pid: pid_t
    /// Set once the leader has been reaped: its pid (and group id) may be reused from then on, so no
    /// signal is sent to the group any more.
    private let state = Mutex<(reaped: Bool, killedBecause: Termination?)>((false, nil))

    /// Starts `arguments` in `directory` with exactly `environment`, stdin from /dev/null and stdout and
    /// stderr appended to the files given (created when absent). `arguments[0]` is found as REAPI says:
    /// a path with a slash is taken relative to `directory`, a bare name is looked up in the command's
    /// PATH (else the worker's).
    init(arguments: [String], environment: [String: String], directory: String, stdoutPath: String, stderrPath: String) throws(StrataError) {
        guard let name = arguments.first, !name.isEmpty else { throw .invalidArgument("the Command has no arguments") }
        let executable = Self.resolve(name, path: environment["PATH"] ?? ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", directory: directory)

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        guard Self.addChdir(&actions, directory) == 0 else {
            throw .internal("posix_spawn_file_actions_addchdir_np is not available: cannot start a command in its working directory")
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group; no signal blocked or ignored because the worker blocks or ignores it
        // (the worker handles SIGTERM and SIGINT itself, and ignores SIGPIPE).
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw .invalidArgument("cannot run \(StrataError.echo(name)) in \(directory): \(String(cString: strerror(result)))")
        }
        self.pid = pid
    }

    /// Waits for the leader to exit (killing the group when `timeout` passes or the task is
    /// cancelled), then kills what the command left running in its group and reaps the leader.
    func wait(timeout: Duration?) async -> Termination {
        let timer = timeout.map { timeout in
            Task { [self] in
                try await Task.sleep(for: timeout)
                kill(because: .timedOut)
            }
        }
        defer { timer?.cancel() }
        let status = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
                let pid = self.pid
                Thread.detachNewThread { [self] in
                    // The leader stays a zombie (WNOWAIT) until its group has been killed: its pid,
                    // which is the group's id, cannot be reused meanwhile.
                    var info = siginfo_t()
                    while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
                    var status: Int32 = 0
                    state.withLock { state in
                        Glibc.kill(-pid, SIGKILL)
                        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                        state.reaped = true
                    }
                    continuation.resume(returning: status)
                }
            }
        } onCancel: {
            kill(because: .cancelled)
        }
        if let reason = state.withLock({ $0.killedBecause }) { return reason }
        // WIFEXITED / WEXITSTATUS / WTERMSIG, which are macros.
        if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
        return .signaled(status & 0x7f)
    }

    /// Kills the whole group now, unless the leader has already been reaped.
    func kill(because reason: Termination) {
        state.withLock { state in
            guard !state.reaped else { return }
            if state.killedBecause == nil { state.killedBecause = reason }
            Glibc.kill(-pid, SIGKILL)
        }
    }

    /// The file `posix_spawn` is given for `name`.
    static func resolve(_ name: String, path: String, directory: String) -> String {
        if name.contains("/") { return name }
        for entry in path.split(separator: ":", omittingEmptySubsequences: false) {
            let dir = entry.isEmpty ? "." : String(entry)
            let candidate = dir + "/" + name
            let absolute = candidate.hasPrefix("/") ? candidate : directory + "/" + candidate
            var info = stat()
            if stat(absolute, &info) == 0 && info.st_mode & S_IFMT == S_IFREG && access(absolute, X_OK) == 0 { return absolute }
        }
        // Not found: posix_spawn reports ENOENT for it.
        return name
    }

    /// glibc's posix_spawn_file_actions_addchdir_np (2.29+), looked up because its declaration is not
    /// in Swift's Glibc module: the child changes directory between fork and exec.
    private static func addChdir(_ actions: inout posix_spawn_file_actions_t, _ directory: String) -> Int32 {
        typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np") else { return -1 }
        let function = unsafeBitCast(symbol, to: AddChdir.self)
        return withUnsafeMutablePointer(to: &actions) { pointer in directory.withCString { function(pointer, $0) } }
    }
}
