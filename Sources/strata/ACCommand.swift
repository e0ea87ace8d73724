import ArgumentParser
import Foundation
import StrataCore
import StrataRemote
import SwiftProtobuf

/// `strata ac get | put`: a REAPI server's action cache from the command line.
struct ACCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ac", abstract: "Read and write a REAPI server's action cache.",
        subcommands: [Get.self, Put.self])

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the ActionResult of an action digest as JSON (protobuf's JSON mapping).")

        @OptionGroup var remote: RemoteClientOptions
        @Argument(help: "The action's digest, HASH/SIZE.") var digest: String

        func validate() throws { _ = try parseDigest(digest, remote) }

        func run() async throws {
            let digest = try parseDigest(digest, remote)
            try await remote.withChannel { channel in
                guard let result = try await RemoteActionCache(channel: channel).get(digest) else {
                    throw StrataError.notFound("no action result for \(digest) in instance \"\(remote.instance)\" at \(channel.endpoint)")
                }
                print(try result.jsonString())
            }
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store an ActionResult (a file in JSON, as `ac get` prints it, or binary) for an action digest.")

        @OptionGroup var remote: RemoteClientOptions
        @Argument(help: "The action's digest, HASH/SIZE.") var digest: String
        @Argument(help: "The ActionResult file.") var file: String

        func validate() throws { _ = try parseDigest(digest, remote) }

        func run() async throws {
            let digest = try parseDigest(digest, remote)
            guard let data = FileManager.default.contents(atPath: file) else {
                throw StrataError.invalidArgument("\(file) cannot be read")
            }
            let result = try ClientCommandInput.actionResult(data, file: file)
            try await remote.withChannel { channel in
                try await RemoteActionCache(channel: channel).update(digest, result)
            }
        }
    }
}

/// `strata capabilities`: the server's GetCapabilities answer as JSON.
struct CapabilitiesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capabilities", abstract: "Print a REAPI server's capabilities for an instance as JSON.")

    @OptionGroup var remote: RemoteClientOptions

    func run() async throws {
        try await remote.withChannel { channel in
            print(try await channel.serverCapabilities().jsonString())
        }
    }
}
