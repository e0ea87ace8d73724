import Foundation
import GRPCCore
import StrataAPI
import StrataCore
import StrataServer
import StrataStorage
import Synchronization
import SwiftProtobuf
import Testing

/// A kind of service no built-in module knows: what a later module (Execution, Bots) adds.
private enum GreetingService: InstanceServiceKey {
    typealias Value = String
    static let serviceName = "Greeting"
}

/// Records the request context each RPC saw, from inside the interceptor chain after the handler (and,
/// for a streamed response, after its producer) ran.
private final class ContextRecorder: ServerInterceptor, Sendable {
    struct Seen: Sendable {
        var method: String
        var service: String
        var instance: String?
        var metadata: ClientRequestMetadata
        var peer: String
        var inProducer: Bool
    }
    let seen = Mutex<[Seen]>([])

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        var response = try await next(request, context)
        record(inProducer: false)
        if case .success(var contents) = response.accepted {
            let producer = contents.producer
            contents.producer = { [self] writer in
                let metadata = try await producer(writer)
                record(inProducer: true)
                return metadata
            }
            response.accepted = .success(contents)
        }
        return response
    }

    private func record(inProducer: Bool) {
        guard let context = RequestContext.current else { return }
        seen.withLock {
            $0.append(Seen(
                method: context.method, service: context.service, instance: context.instanceName,
                metadata: context.metadata, peer: context.peer, inProducer: inProducer))
        }
    }
}

@Suite struct ServiceModuleTests {
    @Test func aServerRegistersOnlyTheServicesItsModulesMake() async throws {
        try await withServer([memoryInstance()], modules: [CapabilitiesModule()]) { clients in
            let capabilities = try await clients.capabilities.getCapabilities(.with { $0.instanceName = "" })
            #expect(capabilities.cacheCapabilities.maxBatchTotalSizeBytes > 0)
            let failure = await rpcFailure {
                _ = try await clients.cas.findMissingBlobs(.with { $0.instanceName = "" })
            }
            #expect(failure?.code == .unimplemented)
        }
    }

    @Test func storageServicesAreRegisteredOnlyWhenSomeInstanceHasThem() async throws {
        // An instance with a CAS only: ByteStream and ActionCache are not registered at all.
        let store = LRUBlobStore(capacityBytes: 1 << 20)
        try await withServer([Instance(name: "", cas: .init(store: store))]) { clients in
            _ = try await clients.cas.findMissingBlobs(.with { $0.instanceName = "" })
            let failure = await rpcFailure {
                _ = try await clients.actionCache.getActionResult(.with {
                    $0.actionDigest = protoDigest(String(repeating: "a", count: 64), 1)
                })
            }
            #expect(failure?.code == .unimplemented)
        }
    }

    @Test func anInstanceIsAMapOfItsServices() throws {
        var greeter = Instance(name: "greeter")
        greeter[GreetingService.self] = "hello"
        let registry = InstanceRegistry([greeter, Instance(name: "silent")])
        #expect(try registry.service(GreetingService.self, of: "greeter") == "hello")
        #expect(registry.anyInstanceHas(GreetingService.self))
        #expect(!registry.anyInstanceHas(Instance.ByteStream.self))
        #expect(throws: StrataError.unimplemented("instance \"silent\" has no Greeting service")) {
            try registry.service(GreetingService.self, of: "silent")
        }
        #expect(greeter.has(GreetingService.self) && greeter.cas == nil)
    }

    @Test func everyLayerSeesTheRequestContext() async throws {
        let recorder = ContextRecorder()
        let blob = Data("context".utf8)
        let digest = Digest.of(blob)
        try await withServer([memoryInstance("main")], interceptors: [recorder]) { clients in
            let requestMetadata = Build_Bazel_Remote_Execution_V2_RequestMetadata.with {
                $0.toolDetails = .with { $0.toolName = "bazel"; $0.toolVersion = "4.2.3" }
                $0.toolInvocationID = "invocation-1"
                $0.correlatedInvocationsID = "build-7"
                $0.actionMnemonic = "CppCompile"
                $0.targetID = "//app:main"
            }
            var metadata = Metadata()
            metadata.addBinary(
                Array(try requestMetadata.serializedBytes() as [UInt8]),
                forKey: "build.bazel.remote.execution.v2.requestmetadata-bin")
            _ = try await clients.cas.findMissingBlobs(
                .with { $0.instanceName = "main"; $0.blobDigests = [digest.proto] }, metadata: metadata)
            _ = try await clients.byteStream.upload("main/uploads/u1/blobs/\(digest.hash)/\(digest.sizeBytes)", blob)
            #expect(try await clients.byteStream.download("main/blobs/\(digest.hash)/\(digest.sizeBytes)") == blob)
        }
        let seen = recorder.seen.withLock { $0 }
        let find = try #require(seen.first { $0.method == "FindMissingBlobs" })
        #expect(find.service == "build.bazel.remote.execution.v2.ContentAddressableStorage")
        #expect(find.instance == "main")
        #expect(find.metadata.toolName == "bazel" && find.metadata.toolVersion == "4.2.3")
        #expect(find.metadata.toolInvocationID == "invocation-1" && find.metadata.correlatedInvocationsID == "build-7")
        #expect(find.metadata.actionMnemonic == "CppCompile" && find.metadata.targetID == "//app:main")
        #expect(find.peer.contains("127.0.0.1"))
        // A streamed response's producer runs after the handler returned: it still sees the context.
        let read = try #require(seen.first { $0.method == "Read" && $0.inProducer })
        #expect(read.instance == "main" && read.metadata.isEmpty)
        #expect(seen.contains { $0.method == "Write" && $0.instance == "main" })
    }
}
