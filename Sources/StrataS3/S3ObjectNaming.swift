import StrataCore

/// Where a blob lives in S3, exactly as BuildGrid 0.9.1 names it, so a BuildGrid bucket is served as is:
/// bucket `template.format(digest=hash)`, key `[path-prefix/][hash[:N]/]hash[N:]_size`. That is a
/// SHA-256 blob's key; a blob of another digest function has the function's folder after the path
/// prefix, `[path-prefix/]{function}/[hash[:N]/]hash[N:]_size` (e.g. `blake3/…`), so a BLAKE3 and a
/// SHA-256 blob with the same hex and size are two objects.
public struct S3ObjectNaming: Sendable, Equatable {
    public let bucketTemplate: S3BucketTemplate
    /// N above; 0 puts no hash folder in the key.
    public let hashPrefixSize: Int
    /// Without leading or trailing slashes; nil when there is none.
    public let pathPrefix: String?

    public init(bucket: S3BucketTemplate, hashPrefixSize: Int = 0, pathPrefix: String? = nil) {
        self.bucketTemplate = bucket
        self.hashPrefixSize = max(0, hashPrefixSize)
        // Python's str.strip("/"); a prefix of only slashes means none, as in BuildGrid.
        let stripped = pathPrefix.map { String($0.drop { $0 == "/" }.reversed().drop { $0 == "/" }.reversed()) }
        self.pathPrefix = stripped?.isEmpty == false ? stripped : nil
    }

    public func bucket(for digest: Digest) throws(StrataError) -> String {
        try bucketTemplate.bucket(forHash: digest.hash)
    }

    public func key(for digest: Digest) -> String {
        var key = ""
        if let pathPrefix { key += pathPrefix + "/" }
        key += digest.namespacePrefix
        var rest = Substring(digest.hash)
        if hashPrefixSize > 0 {
            // Python slices clamp: a prefix size beyond the hash takes all of it and leaves "".
            key += rest.prefix(hashPrefixSize) + "/"
            rest = rest.dropFirst(hashPrefixSize)
        }
        return key + rest + "_\(digest.sizeBytes)"
    }

    /// The digest stored under `key`, or nil when `key` is not a name `key(for:)` makes.
    public func digest(forKey key: String) -> Digest? {
        var rest = Substring(key)
        if let pathPrefix {
            guard rest.hasPrefix(pathPrefix + "/") else { return nil }
            rest = rest.dropFirst(pathPrefix.count + 1)
        }
        var namespace = ""
        if let slash = rest.firstIndex(of: "/"), let function = DigestFunction(name: String(rest[..<slash])) {
            // Function names are not hex: never the hash folder of a SHA-256 key.
            namespace = function.name + "/"
            rest = rest[rest.index(after: slash)...]
        }
        var hashStart = ""
        if hashPrefixSize > 0 {
            guard let slash = rest.firstIndex(of: "/") else { return nil }
            hashStart = String(rest[..<slash])
            rest = rest[rest.index(after: slash)...]
        }
        guard let digest = Digest(storageName: namespace + hashStart + rest), self.key(for: digest) == key else { return nil }
        return digest
    }
}

/// A bucket name that may depend on the digest, as BuildGrid's `bucket.format(digest=hash)`:
/// `{digest}` is the whole hash, `{digest[N]}` its character N, `{{` and `}}` literal braces.
/// Other Python format fields (attributes, conversions, format specs) are refused when parsed.
public struct S3BucketTemplate: Sendable, Equatable, CustomStringConvertible {
    enum Piece: Sendable, Equatable {
        case literal(String)
        case hash
        case hashCharacter(Int)
    }

    let pieces: [Piece]
    public let description: String

    public init(_ template: String) throws(StrataError) {
        var pieces: [Piece] = []
        var literal = ""
        var index = template.startIndex
        func fail(_ reason: String) -> StrataError {
            .invalidArgument("bucket template \"\(template)\": \(reason)")
        }
        while index < template.endIndex {
            let character = template[index]
            let next = template.index(after: index)
            if character == "}" {
                guard next < template.endIndex, template[next] == "}" else { throw fail("a single '}' must be written '}}'") }
                literal.append("}")
                index = template.index(after: next)
                continue
            }
            guard character == "{" else {
                literal.append(character)
                index = next
                continue
            }
            if next < template.endIndex, template[next] == "{" {
                literal.append("{")
                index = template.index(after: next)
                continue
            }
            guard let close = template[next...].firstIndex(of: "}") else { throw fail("a '{' is not closed") }
            let field = template[next..<close]
            if !literal.isEmpty { pieces.append(.literal(literal)); literal = "" }
            if field == "digest" {
                pieces.append(.hash)
            } else if field.hasPrefix("digest["), field.hasSuffix("]"),
                      case let digits = field.dropFirst("digest[".count).dropLast(),
                      !digits.isEmpty, digits.allSatisfy({ ("0"..."9").contains($0) }), let position = Int(digits) {
                // Python reads an all-digit index as a number; anything else (even "-1") is not one.
                pieces.append(.hashCharacter(position))
            } else {
                throw fail("\"{\(field)}\" is not supported: use {digest} or {digest[N]}")
            }
            index = template.index(after: close)
        }
        if !literal.isEmpty { pieces.append(.literal(literal)) }
        self.pieces = pieces
        self.description = template
    }

    /// Every bucket the template can name, for listing: one per combination of the hex characters at
    /// its `{digest[N]}` positions. Refused (INTERNAL) for `{digest}` and for more than three positions.
    public func allBuckets() throws(StrataError) -> [String] {
        if pieces.contains(.hash) {
            throw .internal("S3 bucket template \"\(description)\" names a bucket per hash: its buckets cannot be listed")
        }
        let positions = Array(Set(pieces.compactMap { if case .hashCharacter(let position) = $0 { position } else { nil } })).sorted()
        guard positions.count <= 3 else {
            throw .internal("S3 bucket template \"\(description)\" spreads blobs over too many buckets to list (16^\(positions.count))")
        }
        let hex = Array("0123456789abcdef")
        var combinations: [[Int: Character]] = [[:]]
        for position in positions {
            combinations = combinations.flatMap { partial in hex.map { partial.merging([position: $0]) { $1 } } }
        }
        return combinations.map { characters in
            pieces.map { piece in
                switch piece {
                case .literal(let text): text
                case .hash: ""
                case .hashCharacter(let position): String(characters[position]!)
                }
            }.joined()
        }
    }

    /// Whether every blob goes to one bucket.
    public var isFixed: Bool { pieces.allSatisfy { if case .literal = $0 { true } else { false } } }

    /// The largest character position the template reads, if any.
    public var largestHashPosition: Int? {
        pieces.compactMap { if case .hashCharacter(let position) = $0 { position } else { nil } }.max()
    }

    public func bucket(forHash hash: String) throws(StrataError) -> String {
        var name = ""
        let characters = Array(hash)
        for piece in pieces {
            switch piece {
            case .literal(let text): name += text
            case .hash: name += hash
            case .hashCharacter(let position):
                guard position < characters.count else {
                    throw .internal("S3 bucket template \"\(description)\" reads character \(position) of a \(characters.count)-character hash")
                }
                name.append(characters[position])
            }
        }
        return name
    }
}
