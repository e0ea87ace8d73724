import Foundation
import GRPCCore
import Logging
import StrataAPI
import StrataCore
@testable import StrataLogging
import StrataServer
import StrataStorage
import StrataTestSupport
import Synchronization
import Testing

/// A disk storage whose `tmp` folder the test removes and restores: a real backend that stops and
/// starts being ready.
func preparedDiskStore() async throws -> (store: DiskBlobStore, folder: URL) {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("strata-health-\(UUID().uuidString)")
    let store = DiskBlobStore(path: folder.path, sync: false)
    try await store.prepare()
    return (store, folder)
}

@Suite struct HealthServiceTests {
    static let cas = "build.bazel.remote.execution.v2.ContentAddressableStorage"

    @Test func checkReportsEachServiceAndRefusesUnknownOnes() async throws {
        let (store, folder) = try await preparedDiskStore()
        defer { try? FileManager.default.removeItem(at: folder) }
        let health = HealthStatus(
            readiness: Readiness(backends: [.init(backend: store, name: "!disk-storage", location: "test.yml:1: storages[0]")]),
            period: .milliseconds(50))
        try await withServer([memoryInstance()], health: health) { clients in
            try await waitForStatus(clients, "", .serving)
            for service in ["", Self.cas, "build.bazel.remote.execution.v2.ActionCache", "build.bazel.remote.execution.v2.Capabilities",
                            "google.bytestream.ByteStream", "grpc.health.v1.Health"] {
                let response = try await clients.health.check(.with { $0.service = service })
                #expect(response.status == .serving, "\(service)")
            }
            let failure = await rpcFailure { _ = try await clients.health.check(.with { $0.service = "no.such.Service" }) }
            #expect(failure?.code == .notFound)
            #expect(failure?.message.contains("no.such.Service") == true, "\(failure?.message ?? "")")
            let list = try await clients.health.list(.init())
            #expect(list.statuses[Self.cas]?.status == .serving)
        }
    }

    /// A backend that stops answering turns every service NOT_SERVING, with a warning naming it and
    /// where it is configured; once it answers again, SERVING, which a Watch sees as it happens.
    @Test func aFailingBackendTurnsTheServerNotServingAndBack() async throws {
        let (store, folder) = try await preparedDiskStore()
        defer { try? FileManager.default.removeItem(at: folder) }
        let log = CapturedLog()
        let health = HealthStatus(
            readiness: Readiness(backends: [.init(backend: store, name: "!disk-storage \(folder.path)", location: "test.yml:7: storages[0]")]),
            period: .milliseconds(50), logger: log.logger(label: "strata.health"))
        try await withServer([memoryInstance()], health: health) { clients in
            try await waitForStatus(clients, "", .serving)
            let seen = try await clients.health.watch(.with { $0.service = Self.cas }) { response in
                var seen: [Grpc_Health_V1_HealthCheckResponse.ServingStatus] = []
                for try await message in response.messages {
                    seen.append(message.status)
                    if seen.count == 1 {
                        try FileManager.default.removeItem(at: folder.appendingPathComponent("tmp"))
                    } else if seen.count == 2 {
                        try FileManager.default.createDirectory(at: folder.appendingPathComponent("tmp"), withIntermediateDirectories: false)
                    } else {
                        break
                    }
                }
                return seen
            }
            #expect(seen == [.serving, .notServing, .serving])
            let warning = await log.entry { $0.level == .warning }
            #expect(warning?.message.contains("!disk-storage \(folder.path) (test.yml:7: storages[0])") == true, "\(warning?.message ?? "none")")
            #expect(warning?.message.contains("tmp") == true, "\(warning?.message ?? "none")")
        }
    }

    /// On a graceful shutdown, a Watch is told NOT_SERVING and its stream ends, so it does not hold
    /// the shutdown until its deadline.
    @Test func drainingEndsWatchesWithNotServing() async throws {
        try await withServer([memoryInstance()]) { clients in
            let seen = try await clients.health.watch(.with { $0.service = "" }) { response in
                var seen: [Grpc_Health_V1_HealthCheckResponse.ServingStatus] = []
                for try await message in response.messages {
                    seen.append(message.status)
                    if seen.count == 1 { clients.server.beginGracefulShutdown() }
                }
                return seen
            }
            #expect(seen == [.serving, .notServing])
        }
    }

    func waitForStatus(_ clients: Clients, _ service: String, _ expected: Grpc_Health_V1_HealthCheckResponse.ServingStatus) async throws {
        for _ in 0..<500 {
            if try await clients.health.check(.with { $0.service = service }).status == expected { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("\(service) never became \(expected)")
    }
}

@Suite struct AccessLogTests {
    /// One line per RPC with what an operator looks for: method, instance, status, duration, peer,
    /// principal, the client's invocation id and action mnemonic; a failure with its message.
    @Test func eachRPCLogsOneLineWithItsFields() async throws {
        let log = CapturedLog()
        let blob = Blob.random(size: 100)
        try await withServer([memoryInstance("main")], accessLog: log.logger()) { clients in
            var metadata = Metadata()
            let requestMetadata = Build_Bazel_Remote_Execution_V2_RequestMetadata.with {
                $0.toolDetails = .with { $0.toolName = "bazel"; $0.toolVersion = "7.4.0" }
                $0.toolInvocationID = "invocation-42"
                $0.actionMnemonic = "CppCompile"
            }
            metadata.addBinary(try requestMetadata.serializedBytes(), forKey: "build.bazel.remote.execution.v2.requestmetadata-bin")
            _ = try await clients.cas.findMissingBlobs(
                .with { $0.instanceName = "main"; $0.blobDigests = [blob.digest.proto] }, metadata: metadata)
            let ok = try #require(await log.entry { $0.metadata["rpc"]?.hasSuffix("/FindMissingBlobs") == true })
            #expect(ok.level == .info)
            #expect(ok.message == "FindMissingBlobs OK")
            #expect(ok.metadata["instance"] == "main")
            #expect(ok.metadata["status"] == "OK")
            #expect(ok.metadata["invocation"] == "invocation-42")
            #expect(ok.metadata["mnemonic"] == "CppCompile")
            #expect(ok.metadata["tool"] == "bazel 7.4.0")
            #expect(ok.metadata["principal"] == "anonymous")
            #expect(ok.metadata["peer"]?.hasPrefix("ipv4:127.0.0.1:") == true, "\(ok.metadata)")
            #expect(ok.metadata["duration_ms"].flatMap(Double.init).map { $0 >= 0 } == true, "\(ok.metadata)")
            #expect(ok.metadata["bytes_received"] != nil && ok.metadata["bytes_sent"] != nil)
            #expect(ok.metadata["error"] == nil)

            // A streamed response is logged once it is over; an unknown instance with its message.
            _ = try? await clients.byteStream.download("main/blobs/\(blob.digest)")
            let read = try #require(await log.entry { $0.metadata["rpc"] == "google.bytestream.ByteStream/Read" })
            #expect(read.metadata["status"] == "NOT_FOUND", "\(read.metadata)")
            #expect(read.metadata["error"]?.contains(blob.digest.hash) == true, "\(read.metadata)")

            _ = await rpcFailure { _ = try await clients.cas.findMissingBlobs(.with { $0.instanceName = "other" }) }
            let refused = try #require(await log.entry { $0.metadata["status"] == "INVALID_ARGUMENT" })
            #expect(refused.message == "FindMissingBlobs INVALID_ARGUMENT")
            #expect(refused.metadata["error"]?.contains("other") == true, "\(refused.metadata)")

            // Probes call the health service every few seconds: its lines are debug, below info.
            _ = try await clients.health.check(.init())
            _ = try await clients.capabilities.getCapabilities(.with { $0.instanceName = "main" })
            _ = try #require(await log.entry { $0.message == "GetCapabilities OK" })
            #expect(!log.all.contains { $0.metadata["rpc"]?.hasPrefix("grpc.health.v1.Health/") == true })
        }
    }
}

@Suite struct JSONLogHandlerTests {
    /// Each entry is one line holding one JSON object, with the fixed fields, the metadata as strings,
    /// and quotes, backslashes and newlines escaped.
    @Test func writesOneJSONObjectPerLine() throws {
        let lines = Mutex<[String]>([])
        var logger = Logger(label: "strata.access") { label in
            JSONLogHandler(label: label) { line in lines.withLock { $0.append(line) } }
        }
        logger.logLevel = .debug
        logger.info("GetActionResult NOT_FOUND", metadata: [
            "error": "no \"result\"\nfor C:\\x", "status": "NOT_FOUND", "message": "clash", "list": ["a", "b"],
        ])
        logger.trace("below the level")
        let written = lines.withLock { $0 }
        try #require(written.count == 1)
        #expect(!written[0].contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as? [String: Any])
        #expect(object["level"] as? String == "info")
        #expect(object["label"] as? String == "strata.access")
        #expect(object["message"] as? String == "GetActionResult NOT_FOUND")
        #expect(object["error"] as? String == "no \"result\"\nfor C:\\x")
        #expect(object["status"] as? String == "NOT_FOUND")
        #expect(object["metadata.message"] as? String == "clash")
        #expect(object["list"] as? [String] == ["a", "b"])
        let time = try #require(object["time"] as? String)
        #expect(time.count == "2026-12-05T14:27:29.123Z".count && time.hasSuffix("Z"), "\(time)")
    }
}

@Suite struct TextLogHandlerTests {
    /// swift-log's stream layout: time, level, label, the metadata sorted as key=value (the call's over
    /// the logger's), the source module, the message; one line per entry, ending in its newline.
    @Test func writesSwiftLogsStreamLayout() throws {
        let lines = Mutex<[String]>([])
        var logger = Logger(label: "strata.access") { label in
            TextLogHandler(label: label) { line in lines.withLock { $0.append(line) } }
        }
        logger.logLevel = .info
        logger[metadataKey: "status"] = "UNSET"
        logger.info("FindMissingBlobs OK", metadata: ["status": "OK", "instance": "main", "bytes_sent": "42"])
        logger.debug("below the level")
        logger.warning("plain")
        let written = lines.withLock { $0 }
        try #require(written.count == 2)
        let first = written[0]
        #expect(first.hasSuffix(" info strata.access : bytes_sent=42 instance=main status=OK [StrataServerTests] FindMissingBlobs OK\n"), "\(first)")
        // 2026-12-05T15:40:00+0000: the local time and its offset, as swift-log's stream handler writes it.
        let time = String(first.prefix { $0 != " " })
        #expect(time.count == "2026-12-05T15:40:00+0000".count && time.dropFirst(10).first == "T", "\(time)")
        #expect(written[1].hasSuffix(" warning strata.access : status=UNSET [StrataServerTests] plain\n"), "\(written[1])")
        // The second's text is reused, never stale: a later second is formatted anew.
        let now = time_t(Date().timeIntervalSince1970)
        #expect(TextLogHandler.timestamp(now) == TextLogHandler.timestamp(now))
        #expect(TextLogHandler.timestamp(now) != TextLogHandler.timestamp(now + 1))
    }
}
