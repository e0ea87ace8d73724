import StrataCore

extension S3Client {
    /// HEAD of one bucket of `template`: the one the all-zero hash maps to. A template of the hash
    /// spreads blobs over up to 16^n buckets, too many to HEAD per probe; one proves the endpoint,
    /// the credentials and the naming answer.
    func checkReadiness(of template: S3BucketTemplate) async throws {
        try await headBucket(try template.bucket(forHash: String(repeating: "0", count: DigestFunction.sha256.hexLength)))
    }
}

extension S3BlobStore: ReadinessCheckable {
    public func checkReadiness() async throws { try await client.checkReadiness(of: naming.bucketTemplate) }
}

extension S3ActionCache: ReadinessCheckable {
    public func checkReadiness() async throws { try await client.checkReadiness(of: bucket) }
}
