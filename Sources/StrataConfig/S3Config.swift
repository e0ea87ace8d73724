import StrataCore
import StrataS3
import StrataStorage

extension Builder {
    /// `!s3-storage`, with BuildGrid 0.9.1's options and key layout, plus `region` and
    /// `connect-timeout-seconds` (Strata's: BuildGrid takes the region from boto's environment and
    /// fixes the connect timeout at 120 s).
    mutating func s3Storage(_ node: ConfigNode) throws(ConfigError) -> (store: any BlobStore, summary: String) {
        let options = try node.mapping(allowed: [
            "bucket", "endpoint", "access-key", "secret-key", "region", "connect-timeout-seconds",
            "read-timeout-seconds-per-kilobyte", "write-timeout-seconds-per-kilobyte",
            "read-timeout-min-seconds", "write-timeout-min-seconds", "stall-timeout-seconds", "versioned-deletes",
            "hash-prefix-size", "path-prefix-string", "verify-reads", "compression", "compression-level",
        ])
        let bucket = try s3Bucket(node, options)
        let connectTimeout = try options["connect-timeout-seconds"]?.s3Seconds(positive: true) ?? 10
        var clientConfiguration = try s3ClientConfiguration(node, options, connectTimeoutSeconds: connectTimeout)
        if let stall = options["stall-timeout-seconds"] { clientConfiguration.stallTimeoutSeconds = try stall.s3Seconds(positive: true) }

        if let versioned = options["versioned-deletes"], try versioned.bool() {
            throw versioned.error("versioned-deletes: true is not supported by Strata yet; deletes remove the current version only")
        }

        let readTimeout = S3TransferTimeout(
            minimumSeconds: try options["read-timeout-min-seconds"]?.s3Seconds(positive: true) ?? 120,
            secondsPerKilobyte: try options["read-timeout-seconds-per-kilobyte"]?.s3Seconds(positive: false))
        let writeTimeout = S3TransferTimeout(
            minimumSeconds: try options["write-timeout-min-seconds"]?.s3Seconds(positive: true) ?? 120,
            secondsPerKilobyte: try options["write-timeout-seconds-per-kilobyte"]?.s3Seconds(positive: false))
        let naming = S3ObjectNaming(
            bucket: bucket, hashPrefixSize: try options["hash-prefix-size"]?.int(minimum: 0) ?? 0,
            pathPrefix: try options["path-prefix-string"]?.string())
        let client = S3Client(clientConfiguration)
        let store = S3BlobStore(
            client: client, naming: naming,
            options: S3BlobStore.Options(
                readTimeout: readTimeout, writeTimeout: writeTimeout, compressionLevel: try compressionLevel(options)))
        checkReadiness(of: store, "!s3-storage bucket \(bucket) at \(clientConfiguration.endpoint)", node)
        var layout = "key \(naming.pathPrefix.map { "\($0)/" } ?? "")"
        let n = naming.hashPrefixSize
        layout += n > 0 ? "{hash[:\(n)]}/{hash[\(n):]}_{size}" : "{hash}_{size}"
        // A small blob is PUT whatever is stored (no HEAD first); only a large one's write is skipped.
        let singlePutLimit = Int64(store.options.singlePutLimit)
        let verified = try verifying(store, name: "S3 storage bucket \(bucket)", options) { $0.sizeBytes > singlePutLimit }
        if let level = store.options.compressionLevel { layout += ", new blobs zstd-compressed (level \(level)) under {key}.zst" }
        return (verified, "!s3-storage bucket \(bucket) at \(clientConfiguration.endpoint) (\(clientConfiguration.region)), \(layout)")
    }

    /// `bucket`: a name, or a template of the hash as BuildGrid's `bucket.format(digest=hash)`.
    /// Shared by `!s3-storage` and `!s3action-cache`.
    func s3Bucket(_ node: ConfigNode, _ options: [String: ConfigNode]) throws(ConfigError) -> S3BucketTemplate {
        guard let bucketNode = options["bucket"] else {
            throw node.error("\(node.applicationTag ?? "S3") needs a bucket (a name, or a template such as cas-{digest[0]})")
        }
        let bucketText = try bucketNode.string()
        let bucket: S3BucketTemplate
        do {
            bucket = try S3BucketTemplate(bucketText)
        } catch {
            throw bucketNode.error(error.message)
        }
        if let position = bucket.largestHashPosition, position >= DigestFunction.sha256.hexLength {
            throw bucketNode.error("{digest[\(position)]} is beyond a \(DigestFunction.sha256.hexLength)-character SHA-256 hash")
        }
        return bucket
    }

    /// `endpoint`, `region`, `access-key` and `secret-key` (or AWS's environment variables).
    /// Shared by `!s3-storage` and `!s3action-cache`.
    func s3ClientConfiguration(
        _ node: ConfigNode, _ options: [String: ConfigNode], connectTimeoutSeconds: Double
    ) throws(ConfigError) -> S3ClientConfiguration {
        let region = try options["region"]?.string() ?? S3ClientConfiguration.defaultRegion(node.environment)
        guard !region.isEmpty else { throw options["region"]!.error("the region must not be empty") }
        let endpoint: String
        if let endpointNode = options["endpoint"] {
            endpoint = try endpointNode.string()
            guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://"), endpoint.count > "https://".count else {
                throw endpointNode.error("the endpoint must be an http:// or https:// URL, e.g. https://s3.\(region).amazonaws.com")
            }
        } else {
            endpoint = S3ClientConfiguration.awsEndpoint(region: region)
        }

        let credentials: S3Credentials
        switch (options["access-key"], options["secret-key"]) {
        case (let access?, let secret?):
            credentials = S3Credentials(accessKey: try access.string(), secretKey: try secret.string())
        case (nil, nil):
            guard let fromEnvironment = S3Credentials.fromEnvironment(node.environment) else {
                throw node.error("\(node.applicationTag ?? "S3") needs access-key and secret-key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
            }
            credentials = fromEnvironment
        case (let given?, nil), (nil, let given?):
            throw given.error("access-key and secret-key go together: give both or neither")
        }
        return S3ClientConfiguration(
            endpoint: endpoint, region: region, credentials: credentials, connectTimeoutSeconds: connectTimeoutSeconds)
    }
}

extension ConfigNode {
    /// A number of seconds (integer or decimal), as BuildGrid's float timeout options.
    fileprivate func s3Seconds(positive: Bool) throws(ConfigError) -> Double {
        let value = try secondsNumber()
        guard value <= Duration.maximumSettingSeconds else { throw error("must be at most \(Int(Duration.maximumSettingSeconds)) seconds (100 years)") }
        if positive {
            guard value > 0 else { throw error("must be more than 0 seconds") }
        } else {
            guard value >= 0 else { throw error("must not be negative") }
        }
        return value
    }
}
