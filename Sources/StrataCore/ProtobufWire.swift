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
        /// Groups: long deprecated, never a REAPI field, skipped whole wherever they appear.
        case startGroup = 3
        case endGroup = 4
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

    /// The largest field number protobuf allows.
    public static let maximumFieldNumber = (1 << 29) - 1
    /// Groups nested deeper than this are refused, as swift-protobuf refuses deep messages.
    public static let maximumGroupDepth = 100

    /// Calls `body` for each top-level field of the message in `bytes[range]`, except groups, which
    /// it skips. A field of a known number with an unexpected wire type is for the caller to skip as
    /// unknown, as protobuf's own parsers do.
    @inlinable
    public static func forEachField(
        _ bytes: UnsafeRawBufferPointer, in range: Range<Int>, _ body: (Field) throws -> Void
    ) throws {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count)
        var position = range.lowerBound
        while position < range.upperBound {
            let field = try readField(bytes, at: &position, end: range.upperBound)
            switch field.type {
            case .startGroup: try skipGroup(field.number, bytes, at: &position, end: range.upperBound)
            case .endGroup: throw MalformedMessage()
            default: try body(field)
            }
        }
    }

    /// Reads one tag and its value (or the range of its payload); for a start-group tag, only the tag.
    @inlinable
    public static func readField(_ bytes: UnsafeRawBufferPointer, at position: inout Int, end: Int) throws -> Field {
        let tag = try readVarint(bytes, at: &position, end: end)
        let number = tag >> 3
        guard let type = WireType(rawValue: UInt8(tag & 7)), number != 0, number <= UInt64(maximumFieldNumber) else {
            throw MalformedMessage()
        }
        var field = Field(number: Int(number), type: type, varint: 0, payload: position..<position)
        switch type {
        case .varint: field.varint = try readVarint(bytes, at: &position, end: end)
        case .fixed64, .fixed32:
            let width = type == .fixed64 ? 8 : 4
            guard end - position >= width else { throw MalformedMessage() }
            position += width
        case .lengthDelimited:
            let length = try readVarint(bytes, at: &position, end: end)
            guard length <= UInt64(end - position) else { throw MalformedMessage() }
            field.payload = position..<(position + Int(length))
            position += Int(length)
        case .startGroup, .endGroup: break
        }
        return field
    }

    /// Skips to just after the end-group tag of group `number`, whose start tag was just read.
    /// Iterative, with a bounded depth: a request of nested groups cannot exhaust the stack.
    @inlinable
    public static func skipGroup(_ number: Int, _ bytes: UnsafeRawBufferPointer, at position: inout Int, end: Int) throws {
        var open = [number]
        while let innermost = open.last {
            let field = try readField(bytes, at: &position, end: end)
            switch field.type {
            case .startGroup:
                guard open.count < maximumGroupDepth else { throw MalformedMessage() }
                open.append(field.number)
            case .endGroup:
                guard field.number == innermost else { throw MalformedMessage() }
                open.removeLast()
            default: continue
            }
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
            // Checked writes: a miscounted size must stop here, not run past the buffer.
            precondition(position + ProtobufWire.varintSize(value) <= buffer.count, "a wire message overran its buffer")
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
            precondition(position + payload.count <= buffer.count, "a wire message overran its buffer")
            UnsafeMutableRawBufferPointer(rebasing: buffer[position..<(position + payload.count)]).copyMemory(from: payload)
            position += payload.count
        }

        /// Room for the caller to fill directly, `count` bytes from the current position.
        public mutating func reserve(_ count: Int) -> UnsafeMutableRawBufferPointer {
            precondition(position + count <= buffer.count, "a wire message overran its buffer")
            defer { position += count }
            return UnsafeMutableRawBufferPointer(rebasing: buffer[position..<(position + count)])
        }
    }
}
