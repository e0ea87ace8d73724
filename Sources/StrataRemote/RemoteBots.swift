import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import StrataAPI
import StrataCore

typealias BotsClient = Google_Devtools_Remoteworkers_V1test2_Bots.Client<HTTP2ClientTransport.Posix>
public typealias BotSession = Google_Devtools_Remoteworkers_V1test2_BotSession

/// A Remote Workers API (`google.devtools.remoteworkers.v1test2`) Bots service, as `strata worker`
/// talks to it: Strata's, BuildGrid's or any other, on a `RemoteChannel`.
public final class RemoteBots: Sendable {
    public let channel: RemoteChannel

    public init(channel: RemoteChannel) {
        self.channel = channel
    }

    /// CreateBotSession under the channel's instance name. `wait` is how long the server may hold the
    /// call for a first lease (a long-poll).
    public func create(_ session: BotSession, wait: Duration) async throws -> BotSession {
        try await longPoll("CreateBotSession", wait: wait) { client, options in
            try await BotsClient(wrapping: client).createBotSession(.with {
                $0.parent = self.channel.options.instanceName
                $0.botSession = session
            }, options: options)
        }
    }

    /// UpdateBotSession: reports the session's leases and takes the server's answer, which it may
    /// hold for up to `wait` when there is nothing new (a long-poll).
    public func update(_ session: BotSession, wait: Duration) async throws -> BotSession {
        try await longPoll("UpdateBotSession", wait: wait) { client, options in
            try await BotsClient(wrapping: client).updateBotSession(.with {
                $0.name = session.name
                $0.botSession = session
            }, options: options)
        }
    }

    /// One call with `wait` as its deadline, not the channel's short call timeout: the server holds a
    /// long-poll on purpose (BuildGrid for 0.8 × the deadline). Not retried here: the bot's loop calls
    /// again anyway.
    private func longPoll(
        _ name: String, wait: Duration, _ body: @Sendable (RemoteChannel.Client, CallOptions) async throws -> BotSession
    ) async throws -> BotSession {
        var options = CallOptions.defaults
        options.timeout = wait
        let client = channel.client
        do {
            return try await body(client, options)
        } catch let error as RPCError {
            // No answer even at the long-poll's deadline (a server holds it for less): the connection may
            // have gone silent; the next call goes through a new one.
            if channel.timedOutSilently(error) { channel.replace(client) }
            throw channel.mapped(error, name)
        }
    }
}
