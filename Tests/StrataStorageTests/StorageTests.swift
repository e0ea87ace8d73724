import Foundation
import StrataCore
import StrataStorage
import StrataTestSupport
import Testing

@Suite struct LRUBlobStoreTests {
    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        try await check.run(on: LRUBlobStore(capacityBytes: 256 << 20))
    }

    @Test func refusesBlobLargerThanItsSize() async throws {
        let store = LRUBlobStore(capacityBytes: 1000)
        let blob = Blob.random(size: 1001)
        try await expectError(.resourceExhausted, "writing a blob larger than the store") {
            try await store.write(blob.digest, data: blob.data)
        }
        try expectFailure(await store.writeBatch([(blob.digest, blob.data)])[0], .resourceExhausted, "batch-writing a blob larger than the store")
        #expect(try await store.findMissing([blob.digest]) == [blob.digest])
    }

    @Test func evictsLeastRecentlyUsedWithinBudget() async throws {
        let store = LRUBlobStore(capacityBytes: 3000)
        let blobs = (0..<3).map { _ in Blob.random(size: 1000) }
        for blob in blobs { try await store.write(blob.digest, data: blob.data) }
        // Touch the oldest through FindMissingBlobs: it must now outlive the second.
        #expect(try await store.findMissing([blobs[0].digest]).isEmpty)
        let newcomer = Blob.random(size: 1000)
        try await store.write(newcomer.digest, data: newcomer.data)
        #expect(try await store.findMissing(blobs.map(\.digest) + [newcomer.digest]) == [blobs[1].digest])
        #expect(store.totalBytes <= 3000)
    }

    /// A streamed upload is kept in the pieces it arrived in (small chunks joined): every range, across
    /// piece boundaries or inside one, and a batch read of the whole, must read back the blob's bytes.
    @Test func streamedBlobReadsBackFromItsPieces() async throws {
        let store = LRUBlobStore(capacityBytes: 64 << 20)
        let blob = Blob.random(size: 4 << 20)
        // 16 KiB messages, then large ones, then small again: joined pieces and kept ones alternate;
        // pieces cut short by a large chunk, and small chunks that overflow a piece.
        var sizes: [Int] = Array(repeating: 16 << 10, count: 70) + [300 << 10, 1 << 20, 5000, 1, 256 << 10, 1]
            + Array(repeating: 200 << 10, count: 6)
        sizes.append(blob.data.count - sizes.reduce(0, +))
        var chunks: [Data] = []
        var position = 0
        for size in sizes {
            chunks.append(Data(blob.data[position..<(position + size)]))
            position += size
        }
        let sent = chunks
        try await store.write(blob.digest, body: BlobBody { var index = 0
            return BlobBody.AsyncIterator {
                guard index < sent.count else { return nil }
                defer { index += 1 }
                return sent[index]
            }
        })
        let size = Int64(blob.data.count)
        let boundary = Int64(70 * (16 << 10))
        for (offset, limit) in [(0, nil), (1, nil), (boundary - 3, 10), (boundary, Int64(300 << 10)), (size - 1, nil),
                                (Int64(1 << 20) + 17, Int64(2 << 20)), (size, nil)] as [(Int64, Int64?)] {
            let read = try await store.read(blob.digest, offset: offset, limit: limit).collect(limit: size)
            let end = limit.map { min(size, offset + $0) } ?? size
            #expect(read == blob.data[Int(offset)..<Int(end)], "offset \(offset), limit \(String(describing: limit))")
        }
        #expect(try await store.readBatch([blob.digest])[0].get() == blob.data)
    }
}

@Suite struct DiskBlobStoreTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("strata-disk-\(UUID().uuidString)").path

    @Test(arguments: BlobStoreConformance.cases)
    func conformance(_ check: BlobStoreConformance) async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await check.run(on: DiskBlobStore(path: root))
    }

    @Test func survivesRestart() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let blob = Blob.random(size: 5000)
        do {
            let store = DiskBlobStore(path: root)
            try await store.write(blob.digest, data: blob.data)
        }
        let reopened = DiskBlobStore(path: root)
        #expect(try await reopened.readAll(blob.digest) == blob.data)
    }

    @Test func noPartialFileUnderAFinalName() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = DiskBlobStore(path: root, sync: false)
        let blob = Blob.random(size: 3 << 20)
        let finalPath = "\(root)/cas/\(blob.digest.hash.prefix(2))/\(blob.digest.hash)_\(blob.digest.sizeBytes)"
        let halfway = AsyncStream<Void>.makeStream()
        let release = AsyncStream<Void>.makeStream()
        let body = BlobBody {
            var step = 0
            var releaseIterator = release.stream.makeAsyncIterator()
            return BlobBody.AsyncIterator {
                step += 1
                switch step {
                case 1, 2: return blob.data[((step - 1) << 20)..<(step << 20)]
                case 3:
                    halfway.continuation.yield()
                    _ = await releaseIterator.next()
                    return blob.data[(2 << 20)...]
                default: return nil
                }
            }
        }
        async let write: Void = store.write(blob.digest, body: body)
        var halfwayIterator = halfway.stream.makeAsyncIterator()
        _ = await halfwayIterator.next()
        // Two MiB have been written to a temporary file; nothing is visible under the final name.
        #expect(!FileManager.default.fileExists(atPath: finalPath))
        #expect(try await store.findMissing([blob.digest]) == [blob.digest])
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(root)/tmp").count == 1)
        release.continuation.yield()
        try await write
        #expect(FileManager.default.fileExists(atPath: finalPath))
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(root)/tmp").isEmpty)
    }

    @Test func creatingTheStoreTouchesNothingAndAWriteMakesTheFoldersItNeeds() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = DiskBlobStore(path: root, sync: false, budget: .init(maxBytes: 1 << 20))
        #expect(!FileManager.default.fileExists(atPath: root))
        let blob = Blob.random(size: 100)
        #expect(try await store.findMissing([blob.digest]) == [blob.digest])
        #expect(!FileManager.default.fileExists(atPath: root))
        // Unprepared, or its folder removed under it: a write creates what it needs.
        try await store.write(blob.digest, data: blob.data)
        try FileManager.default.removeItem(atPath: root)
        #expect(await store.writeBatch([(blob.digest, blob.data)]).allSatisfy { (try? $0.get()) != nil })
        #expect(try await store.readAll(blob.digest) == blob.data)
    }

    @Test func prepareRemovesOnlyStaleTemporaryFiles() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await DiskBlobStore(path: root).prepare()
        #expect(FileManager.default.fileExists(atPath: "\(root)/cas/ff"))
        _ = FileManager.default.createFile(atPath: "\(root)/tmp/crashed", contents: Data([1, 2, 3]))
        let stale = Date().addingTimeInterval(-DiskBlobStore.staleTemporaryFileAge.timeInterval - 60)
        try FileManager.default.setAttributes([.modificationDate: stale], ofItemAtPath: "\(root)/tmp/crashed")
        // Another process sharing the folder is writing this one.
        _ = FileManager.default.createFile(atPath: "\(root)/tmp/in-flight", contents: Data([4, 5, 6]))
        try await DiskBlobStore(path: root).prepare()
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(root)/tmp") == ["in-flight"])
    }

    @Test func preparingAnotherStoreOnTheFolderDoesNotBreakAnUploadInFlight() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = DiskBlobStore(path: root, sync: false)
        try await store.prepare()
        let blob = Blob.random(size: 3 << 20)
        let upload = HeldUpload(blob)
        async let write: Void = store.write(blob.digest, body: upload.body)
        await upload.waitUntilHalfway()
        // A second server starting on the same folder while the upload is half written.
        try await DiskBlobStore(path: root, sync: false).prepare()
        upload.release()
        try await write
        #expect(try await store.readAll(blob.digest) == blob.data)
    }

    @Test func failedWriteLeavesNoTemporaryFile() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = DiskBlobStore(path: root)
        let blob = Blob.random(size: 2 << 20)
        var wrong = blob.data
        wrong[wrong.count - 1] ^= 1
        await #expect(throws: StrataError.self) { try await store.write(blob.digest, data: wrong) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(root)/tmp").isEmpty)
    }
}
