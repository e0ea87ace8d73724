/// Protobuf wire format, read and written in place.
///
/// The hot CAS calls (FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs) and the load generator use it
/// instead of generated messages: decoding 1000 digests into messages allocates 1000 Strings of hex that
/// are validated and thrown away at once, and encoding an answer through a message builds it twice.
public enum ProtobufWire {
    public enum WireType: UInt8, Sendable {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    /// One field of a message: its number, and its varint value or the range of its payload.
    public struct Field {
        public var number: Int
        public var type: WireType
        public var varint: UInt64
        public var payload: Range<Int>

        @inlinable
        public init(number: Int, type: WireType, varint: UInt64, payload: Range<Int>) {
            self.number = number
            self.type = type
            self.varint = varint
            self.payload = payload
        }
    }

    public struct MalformedMessage: Error, CustomStringConvertible {
        public let what: String
        public init(_ what: String = "a message") { self.what = what }
        public var description: String { "\(what) is not well-formed protobuf" }
    }

    /// Calls `body` for each top-level field of the message in `bytes[range]`.
    @inlinable
    public static func forEachField(
        _ bytes: UnsafeRawBufferPointer, in range: Range<Int>, _ body: (Field) throws -> Void
    ) throws {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count)
        var position = range.lowerBound
        while position < range.upperBound {
            let tag = try readVarint(bytes, at: &position, end: range.upperBound)
            // Groups (3, 4) are long deprecated and never appear in the REAPI.
            guard let type = WireType(rawValue: UInt8(tag & 7)), tag >> 3 != 0 else { throw MalformedMessage() }
            var field = Field(number: Int(tag >> 3), type: type, varint: 0, payload: position..<position)
            switch type {
            case .varint: field.varint = try readVarint(bytes, at: &position, end: range.upperBound)
            case .fixed64, .fixed32:
                let width = type == .fixed64 ? 8 : 4
                guard range.upperBound - position >= width else { throw MalformedMessage() }
                position += width
            case .lengthDelimited:
                let length = try readVarint(bytes, at: &position, end: range.upperBound)
                guard length <= UInt64(range.upperBound - position) else { throw MalformedMessage() }
                field.payload = position..<(position + Int(length))
                position += Int(length)
            }
            try body(field)
        }
    }

    @inlinable
    public static func readVarint(_ bytes: UnsafeRawBufferPointer, at position: inout Int, end: Int) throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < end, shift < 64 else { throw MalformedMessage() }
            let byte = bytes[position]
            position += 1
            result |= UInt64(byte & 0x7f) << shift
            if byte < 0x80 { return result }
            shift += 7
        }
    }

    @inlinable
    public static func varintSize(_ value: UInt64) -> Int {
        var value = value
        var size = 1
        while value >= 0x80 {
            value >>= 7
            size += 1
        }
        return size
    }

    /// Bytes of a length-delimited field with a one-byte tag (fields 1-15) and `length` bytes of payload.
    @inlinable
    public static func lengthDelimitedSize(_ length: Int) -> Int {
        1 + varintSize(UInt64(length)) + length
    }

    /// Bytes of a varint field with a one-byte tag, or 0 for proto3's default value, which is not written.
    @inlinable
    public static func varintFieldSize(_ value: UInt64) -> Int {
        value == 0 ? 0 : 1 + varintSize(value)
    }

    public static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
    }

    public static func appendTag(_ field: Int, _ type: WireType, to out: inout [UInt8]) {
        appendVarint(UInt64(field) << 3 | UInt64(type.rawValue), to: &out)
    }

    /// Writes a message into a buffer sized for it beforehand.
    public struct Writer {
        public let buffer: UnsafeMutableRawBufferPointer
        public private(set) var position = 0

        public init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }

        public mutating func varint(_ value: UInt64) {
            var value = value
            while value >= 0x80 {
                buffer[position] = UInt8(truncatingIfNeeded: value) | 0x80
                position += 1
                value >>= 7
            }
            buffer[position] = UInt8(value)
            position += 1
        }

        public mutating func tag(_ field: Int, _ type: WireType) {
            varint(UInt64(field) << 3 | UInt64(type.rawValue))
        }

        /// A varint field, omitted when 0 as proto3 does.
        public mutating func varintField(_ field: Int, _ value: UInt64) {
            guard value != 0 else { return }
            tag(field, .varint)
            varint(value)
        }

        /// The tag and length of a length-delimited field whose payload the caller writes next.
        public mutating func lengthDelimited(_ field: Int, length: Int) {
            tag(field, .lengthDelimited)
            varint(UInt64(length))
        }

        public mutating func bytes(_ field: Int, _ payload: UnsafeRawBufferPointer) {
            lengthDelimited(field, length: payload.count)
            bytes(payload)
        }

        public mutating func bytes(_ payload: UnsafeRawBufferPointer) {
            guard !payload.isEmpty else { return }
            UnsafeMutableRawBufferPointer(rebasing: buffer[position..<(position + payload.count)]).copyMemory(from: payload)
            position += payload.count
        }

        /// Room for the caller to fill directly, `count` bytes from the current position.
        public mutating func reserve(_ count: Int) -> UnsafeMutableRawBufferPointer {
            defer { position += count }
            return UnsafeMutableRawBufferPointer(rebasing: buffer[position..<(position + count)])
        }
    }
}
