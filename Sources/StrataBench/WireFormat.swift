import GRPCCore

/// Protobuf wire-format helpers that let the load generator send requests it serialized once and
/// check responses without building them as messages.
///
/// The client shares the machine with the server it measures: every microsecond it spends building
/// or decoding a message is taken from the server. A FindMissingBlobs answer of 1000 digests decoded
/// into messages is 1000 Strings allocated and freed; a BatchReadBlobs answer is 100 copies of its
/// blobs. Summarising the bytes in place is enough to check the answer.
enum Wire {
    enum WireType: UInt8 {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
    }

    static func varintSize(_ value: UInt64) -> Int {
        var value = value
        var size = 1
        while value >= 0x80 {
            value >>= 7
            size += 1
        }
        return size
    }

    static func appendTag(_ field: Int, _ type: WireType, to out: inout [UInt8]) {
        appendVarint(UInt64(field) << 3 | UInt64(type.rawValue), to: &out)
    }

    /// One field of a message: its number, and its varint value or the range of its payload.
    struct Field {
        var number: Int
        var type: WireType
        var varint: UInt64
        var payload: Range<Int>
    }

    struct MalformedMessage: Error, CustomStringConvertible {
        var description: String { "a response is not a well-formed protobuf message" }
    }

    /// Calls `body` for each top-level field of the message in `bytes`.
    static func forEachField(
        _ bytes: UnsafeRawBufferPointer, in range: Range<Int>, _ body: (Field) throws -> Void
    ) throws {
        var position = range.lowerBound
        func readVarint() throws -> UInt64 {
            var result: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard position < range.upperBound, shift < 64 else { throw MalformedMessage() }
                let byte = bytes[position]
                position += 1
                result |= UInt64(byte & 0x7f) << shift
                if byte < 0x80 { return result }
                shift += 7
            }
        }
        while position < range.upperBound {
            let tag = try readVarint()
            guard let type = WireType(rawValue: UInt8(tag & 7)) else { throw MalformedMessage() }
            var field = Field(number: Int(tag >> 3), type: type, varint: 0, payload: position..<position)
            switch type {
            case .varint: field.varint = try readVarint()
            case .fixed64, .fixed32:
                let width = type == .fixed64 ? 8 : 4
                guard range.upperBound - position >= width else { throw MalformedMessage() }
                position += width
            case .lengthDelimited:
                let length = try readVarint()
                guard length <= UInt64(range.upperBound - position) else { throw MalformedMessage() }
                field.payload = position..<(position + Int(length))
                position += Int(length)
            }
            try body(field)
        }
    }
}

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
