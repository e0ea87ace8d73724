import Foundation
import StrataAPI
import StrataActionCache
import StrataCore
import SwiftProtobuf

/// What the `strata cas` / `strata ac` commands read from their arguments and files.
public enum ClientCommandInput {
    /// A digest as clients print it: `HASH/SIZE`, of `function` (SHA-256 unless told).
    public static func digest(_ text: String, function: DigestFunction = .sha256) throws(StrataError) -> Digest {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let size = Int64(parts[1]), size >= 0 else {
            throw .invalidArgument("\(StrataError.echo(text)) is not a digest; expected HASH/SIZE, e.g. e3b0c442…b855/0")
        }
        return try Digest(hash: String(parts[0]), sizeBytes: size, function: function)
    }

    /// An ActionResult from a file: its JSON (protobuf's JSON mapping, as `strata ac get` prints it) or
    /// its binary encoding.
    public static func actionResult(_ data: Data, file: String) throws(StrataError) -> ActionResult {
        let jsonError: any Error
        do {
            return try ActionResult(jsonUTF8Data: data)
        } catch {
            jsonError = error
        }
        // Text that starts like JSON is JSON: its own error says what is wrong with it.
        if let first = data.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }), first == UInt8(ascii: "{") {
            throw .invalidArgument("\(file): not an ActionResult in JSON: \(jsonError)")
        }
        do {
            return try ActionResult(serializedBytes: data)
        } catch {
            throw .invalidArgument("\(file): neither an ActionResult in JSON (\(jsonError)) nor in protobuf's binary encoding (\(error))")
        }
    }

    /// The RequestMetadata a client command sends: tool `strata`, and one invocation id for all its calls.
    public static func requestMetadata(version: String) -> ClientRequestMetadata {
        var metadata = ClientRequestMetadata()
        metadata.toolName = "strata"
        metadata.toolVersion = version
        metadata.toolInvocationID = UUID().uuidString.lowercased()
        return metadata
    }
}
