import Foundation
import NIOCore
import StrataCore
import StrataStorage
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite struct ShortFileOperationsTests {
    /// A quick call runs in the caller's thread (no hop to the pool and back); one slower than
    /// `slowCall` sends the calls of the next `poolPeriod` to the pool, then they come back; errors
    /// reach the caller either way.
    @Test func quickCallsRunInPlaceUntilOneIsSlow() async throws {
        let calls = ShortFileOperations(slowCall: .milliseconds(1), poolPeriod: .milliseconds(200))
        let caller = pthread_self()
        let quick = try await calls.run { pthread_self() }
        #expect(pthread_equal(quick, caller) != 0)
        #expect(calls.inline)

        // A stalled disk: the call still answers, and the next ones go to the pool.
        #expect(try await calls.run { usleep(20_000); return 7 } == 7)
        #expect(!calls.inline)
        let callerAfter = pthread_self()
        let pooled = try await calls.run { pthread_self() }
        #expect(pthread_equal(pooled, callerAfter) == 0)
        await #expect(throws: StrataError.self) { try await calls.run { throw StrataError.internal("pooled failure") } }

        // After the period (waited out with a wide margin), back in place.
        try await Task.sleep(for: .milliseconds(600))
        #expect(calls.inline)
        await #expect(throws: StrataError.self) { try await calls.run { throw StrataError.internal("in-place failure") } }
        let callerLater = pthread_self()
        let again = try await calls.run { pthread_self() }
        #expect(pthread_equal(again, callerLater) != 0)
    }
}
