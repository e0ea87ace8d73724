/// A parsed ByteStream resource name (REAPI v2.12, "ByteStream API" section).
///
/// Reads:  `{instance}/blobs/{digest_function/}{hash}/{size}`
///         `{instance}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}`
/// Writes: `{instance}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/optional_metadata}`
///         `{instance}/uploads/{uuid}/compressed-blobs/{compressor}/{digest_function/}{hash}/{size}{/meta}`
public struct ResourceName: Sendable, Hashable {
    public var instanceName: String
    public var uploadID: String?
    public var compressor: String?
    public var digest: Digest

    /// Segments that the spec reserves; an instance name cannot contain them, so the first one ends it.
    public static let reservedSegments: Set<Substring> = [
        "blobs", "uploads", "actions", "actionResults", "operations", "capabilities", "compressed-blobs",
    ]

    public static func parseRead(_ name: String) throws(StrataError) -> ResourceName {
        let segments = name.split(separator: "/", omittingEmptySubsequences: false)
        guard let start = segments.firstIndex(where: { $0 == "blobs" || $0 == "compressed-blobs" }) else {
            throw .invalidArgument(
                "resource name \"\(StrataError.echo(name))\" is not a blob to read: expected {instance}/blobs/{hash}/{size}")
        }
        let instance = try instanceName(segments[..<start], in: name)
        let (compressor, digest, rest) = try parseBlob(segments[start...], in: name)
        guard rest.isEmpty else {
            throw .invalidArgument(
                "resource name \"\(StrataError.echo(name))\" has extra segments after the size: expected {instance}/blobs/{hash}/{size}")
        }
        return ResourceName(instanceName: instance, uploadID: nil, compressor: compressor, digest: digest)
    }

    public static func parseWrite(_ name: String) throws(StrataError) -> ResourceName {
        let segments = name.split(separator: "/", omittingEmptySubsequences: false)
        guard let start = segments.firstIndex(of: "uploads") else {
            throw .invalidArgument(
                "resource name \"\(StrataError.echo(name))\" is not an upload: expected {instance}/uploads/{uuid}/blobs/{hash}/{size}")
        }
        let instance = try instanceName(segments[..<start], in: name)
        guard segments.count > start + 2, !segments[start + 1].isEmpty else {
            throw .invalidArgument(
                "resource name \"\(StrataError.echo(name))\" lacks an upload id: expected {instance}/uploads/{uuid}/blobs/{hash}/{size}")
        }
        let uuid = String(segments[start + 1])
        let (compressor, digest, _) = try parseBlob(segments[(start + 2)...], in: name)
        // Anything after the size is optional metadata that the spec tells servers to ignore.
        return ResourceName(instanceName: instance, uploadID: uuid, compressor: compressor, digest: digest)
    }

    private static func instanceName(_ segments: ArraySlice<Substring>, in name: String) throws(StrataError) -> String {
        if segments.contains(where: \.isEmpty) {
            throw .invalidArgument("resource name \"\(StrataError.echo(name))\" has an empty segment in its instance name")
        }
        return segments.joined(separator: "/")
    }

    /// Parses `blobs/{df/}{hash}/{size}...` or `compressed-blobs/{compressor}/{df/}{hash}/{size}...`.
    private static func parseBlob(
        _ segments: ArraySlice<Substring>, in name: String
    ) throws(StrataError) -> (String?, Digest, ArraySlice<Substring>) {
        var rest = segments
        let kind = rest.popFirst()
        var compressor: String?
        if kind == "compressed-blobs" {
            guard let value = rest.popFirst(), !value.isEmpty else {
                throw .invalidArgument("resource name \"\(StrataError.echo(name))\" lacks a compressor after compressed-blobs/")
            }
            compressor = String(value)
        } else if kind != "blobs" {
            throw .invalidArgument(
                "resource name \"\(StrataError.echo(name))\": expected blobs/ or compressed-blobs/ after the upload id")
        }
        var explicitFunction: DigestFunction?
        if rest.count >= 3, let first = rest.first, let function = DigestFunction(name: String(first)) {
            explicitFunction = function
            rest = rest.dropFirst()
        }
        guard let hashSegment = rest.popFirst(), let sizeSegment = rest.popFirst() else {
            throw .invalidArgument("resource name \"\(StrataError.echo(name))\" lacks {hash}/{size}")
        }
        guard !sizeSegment.isEmpty, sizeSegment.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let size = Int64(sizeSegment)
        else {
            throw .invalidArgument("resource name \"\(StrataError.echo(name))\": size \"\(StrataError.echo(sizeSegment))\" is not a non-negative integer")
        }
        let hash = String(hashSegment)
        let function: DigestFunction
        if let explicitFunction {
            function = try explicitFunction.requireSupported()
        } else {
            function = try DigestFunction.resolve(protoValue: 0, hash: hash)
        }
        let digest = try Digest(hash: hash, sizeBytes: size, function: function)
        return (compressor, digest, rest)
    }
}

extension Digest {
    /// `{hash}/{size}` after `blobs/` in a ByteStream resource name, preceded by `{digest_function}/`
    /// for the functions the spec does not let a server infer from the hash's length (BLAKE3).
    public var resourceNamePath: String {
        (function.isImplicitInResourceNames ? "" : "\(function.name)/") + "\(hash)/\(sizeBytes)"
    }
}
