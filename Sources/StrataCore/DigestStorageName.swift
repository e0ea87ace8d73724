/// How storages that name blobs by text (disk files, S3 keys, Redis members and keys) write a digest,
/// so that one storage holds blobs of several digest functions without collisions.
///
/// A SHA-256 digest is `{hash}_{size}`, exactly as before other functions existed and as BuildGrid
/// names blobs, so existing deployments are read as they are. Any other function's digest is
/// `{function}/{hash}_{size}` (e.g. `blake3/{hash}_{size}`): a BLAKE3 and a SHA-256 blob with the same
/// 64 hex digits and size are two names. The size stays last, where Redis's scripts find it; the
/// function names are not hex, so they never read as the start of a hash.
extension Digest {
    /// `{hash}_{size}` for SHA-256, `{function}/{hash}_{size}` for the other functions.
    public var storageName: String {
        namespacePrefix + "\(hash)_\(sizeBytes)"
    }

    /// `""` for SHA-256, `"{function}/"` for the other functions: what precedes a storage name's hash.
    public var namespacePrefix: String {
        function == .sha256 ? "" : function.name + "/"
    }

    /// The digest `storageName` wrote as `name`, or nil for any other name: `{hash}_{size}` must be a
    /// SHA-256 hash, `{function}/{hash}_{size}` a hash of that supported function other than SHA-256.
    public init?(storageName name: some StringProtocol) {
        var rest = Substring(name)
        var function = DigestFunction.sha256
        if let slash = rest.firstIndex(of: "/") {
            guard let named = DigestFunction(name: String(rest[..<slash])), named != .sha256,
                  DigestFunction.supported.contains(named)
            else { return nil }
            function = named
            rest = rest[rest.index(after: slash)...]
        }
        self.init(function: function, hashAndSize: rest)
    }

    /// The digest of `function` that `{hash}_{size}` names, or nil when it names none.
    public init?(function: DigestFunction, hashAndSize name: some StringProtocol) {
        guard let separator = name.lastIndex(of: "_"),
              case let sizeText = name[name.index(after: separator)...],
              !sizeText.isEmpty, sizeText.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let size = Int64(sizeText),
              let digest = try? Digest(hash: String(name[..<separator]), sizeBytes: size, function: function)
        else { return nil }
        self = digest
    }
}
