import Foundation
import GRPCCore
import StrataActionCache
import StrataAPI
import StrataConfig
import StrataCore
import StrataRemote
import StrataServer
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct ActionCacheCompletenessTests {
    static let yaml = """
        server:
          - !channel { address: "127.0.0.1:0", insecure-mode: true }
        storages:
          - &cas !lru-storage { size: 64M }
        caches:
          - &ac !lru-action-cache { max-cached-refs: 1000 }
        instances:
          - name: main
            services:
              - !cas { storage: *cas }
              - !bytestream { storage: *cas }
              - !action-cache { cache: *ac }
        """

    @Test func anEntryWhoseOutputWasEvictedIsNotFoundThroughTheServer() async throws {
        let configuration = try Configuration.parse(yaml: Self.yaml, file: "test.yml", environment: [:])
        let instance = try #require(configuration.instances.first)
        #expect(instance.actionCache is CompletenessCheckingActionCache)
        let store = try #require(instance.cas?.store)
        try await withServer(configuration.instances) { clients in
            let output = Blob.random(size: 100)
            let action = Blob.random(size: 140).digest
            _ = try await clients.cas.batchUpdateBlobs(.with {
                $0.instanceName = "main"
                $0.requests = [.with { $0.digest = output.digest.proto; $0.data = output.data }]
            })
            let result = ActionResult.with { $0.outputFiles = [.with { $0.path = "out/a"; $0.digest = output.digest.proto }] }
            _ = try await clients.actionCache.updateActionResult(.with {
                $0.instanceName = "main"; $0.actionDigest = action.proto; $0.actionResult = result
            })
            #expect(try await clients.actionCache.getActionResult(.with { $0.instanceName = "main"; $0.actionDigest = action.proto }) == result)
            try await store.delete([output.digest])
            let failure = await rpcFailure {
                _ = try await clients.actionCache.getActionResult(.with { $0.instanceName = "main"; $0.actionDigest = action.proto })
            }
            #expect(failure?.code == .notFound)
            // Uploading the output again is not enough: the stale entry was dropped, so the action reruns.
            _ = try await clients.cas.batchUpdateBlobs(.with {
                $0.instanceName = "main"
                $0.requests = [.with { $0.digest = output.digest.proto; $0.data = output.data }]
            })
            let again = await rpcFailure {
                _ = try await clients.actionCache.getActionResult(.with { $0.instanceName = "main"; $0.actionDigest = action.proto })
            }
            #expect(again?.code == .notFound)
        }
    }

    @Test(arguments: ActionCacheConformance.cases)
    func remoteActionCacheConformance(_ check: ActionCacheConformance) async throws {
        let instance = Instance(name: "ac", actionCache: LRUActionCache(maxEntries: 10_000))
        try await withServer([instance]) { clients in
            var options = RemoteChannel.Options()
            options.instanceName = "ac"
            let cache = try RemoteActionCache(url: "127.0.0.1:\(clients.port)", options: options)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await cache.channel.run() }
                defer { cache.channel.shutdown() }
                if check.name == "remove" {
                    try await expectError(.unimplemented, "removing through the REAPI") { try await cache.remove(Blob.random(size: 1).digest) }
                } else {
                    try await check.run(on: cache)
                }
            }
        }
    }
}
