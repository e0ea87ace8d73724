import GRPCCore
import StrataCore

/// Protobuf wire-format helpers that let the load generator send requests it serialized once and
/// check responses without building them as messages.
///
/// The client shares the machine with the server it measures: every microsecond it spends building
/// or decoding a message is taken from the server. A FindMissingBlobs answer of 1000 digests decoded
/// into messages is 1000 Strings allocated and freed; a BatchReadBlobs answer is 100 copies of its
/// blobs. Summarising the bytes in place is enough to check the answer.
typealias Wire = ProtobufWire

/// A request serialized once, before the clock starts, and sent as is.
struct PreSerialized: Sendable {
    let bytes: [UInt8]
}

struct PreSerializedSerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: PreSerialized) throws -> Bytes {
        Bytes(message.bytes)
    }
}

/// What a response holds, read off its wire bytes: how many times a repeated field occurs, the bytes
/// of its payloads, and how many of its entries carry a google.rpc.Status whose code is not OK.
struct WireSummary: Sendable {
    var count = 0
    var payloadBytes = 0
    var failures = 0
}

struct WireSummaryDeserializer: MessageDeserializer {
    /// The top-level field counted.
    let field: Int
    /// Within each entry of `field`, the google.rpc.Status field whose code must be 0 (OK).
    var statusField: Int?

    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> WireSummary {
        try serializedMessageBytes.withUnsafeBytes { bytes in
            var summary = WireSummary()
            try Wire.forEachField(bytes, in: 0..<bytes.count) { entry in
                guard entry.number == field else { return }
                summary.count += 1
                summary.payloadBytes += entry.payload.count
                guard let statusField, entry.type == .lengthDelimited else { return }
                try Wire.forEachField(bytes, in: entry.payload) { inner in
                    guard inner.number == statusField, inner.type == .lengthDelimited else { return }
                    try Wire.forEachField(bytes, in: inner.payload) { status in
                        // google.rpc.Status.code is field 1.
                        if status.number == 1 && status.type == .varint && status.varint != 0 { summary.failures += 1 }
                    }
                }
            }
            return summary
        }
    }
}
