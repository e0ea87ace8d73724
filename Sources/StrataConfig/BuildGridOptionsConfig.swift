import StrataServer

/// BuildGrid options real configurations carry, accepted as BuildGrid reads them: mapped onto Strata
/// where Strata has the same setting, otherwise ignored with a warning saying why (none where BuildGrid's
/// value is what Strata does anyway); and the execution parts, refused by name.
extension Builder {
    /// The top-level keys other than the objects: `description`, `server-reflection`, `grpc-compression`,
    /// `grpc-server-options`, `metering` and `services` (`schedulers` are built after the storages they
    /// name: ExecutionConfig.swift). Each is an item of its own.
    mutating func buildServerOptions(_ top: [String: ConfigNode]) {
        // Documentation, as in BuildGrid: a string, used by nothing.
        if let node = top["description"] { _ = check { _ throws(ConfigError) in try node.string() } }
        if let node = top["server-reflection"] {
            _ = check { builder throws(ConfigError) in
                // BuildGrid's default is true; Strata serves no reflection, which `false` asks for anyway.
                if try node.bool() {
                    builder.ignore(node, because: "Strata does not serve gRPC server reflection; give grpcurl and similar clients the REAPI .proto files")
                }
            }
        }
        if let node = top["grpc-compression"] {
            _ = check { builder throws(ConfigError) in
                switch try node.string() {
                case "NoCompression": break
                case "Gzip", "Deflate":
                    builder.ignore(node, because: "Strata sends its responses uncompressed (clients accept that whatever they asked for)")
                case let other:
                    throw node.error("unknown grpc-compression \"\(other)\"; BuildGrid's values are NoCompression, Deflate and Gzip")
                }
            }
        }
        if let node = top["grpc-server-options"] { grpcServerOptions(node) }
        if let node = top["metering"] { _ = check { builder throws(ConfigError) in try builder.metering(node) } }
        if let node = top["services"] {
            for entry in check({ _ throws(ConfigError) in try node.sequence() }) ?? [] {
                let tag = entry.applicationTag ?? "an untagged value"
                switch tag {
                case "!bots-service":
                    record(entry.error("!bots-service is not supported by Strata yet: give each instance that serves bots a !bots service instead"))
                case "!quota-service":
                    record(entry.error("!quota-service is not supported by Strata yet: Strata has no per-identity execution quotas"))
                default:
                    record(entry.error("unknown instance-less service \(tag); BuildGrid's are !quota-service and !bots-service, which Strata does not have yet"))
                }
            }
        }
    }

    /// BuildGrid's `metering:` (a `!metering` object) throttles Execute requests per identity; Strata
    /// serves none, so the section is checked and ignored. Its throttling file is not read.
    mutating func metering(_ node: ConfigNode) throws(ConfigError) {
        try requireTag(node, "!metering")
        _ = try node.mapping(allowed: [
            "redis", "throttling-config-path", "throttling-data-expiration-sec", "operation-deduplication-period-sec",
        ])
        ignore(node, because: "metering throttles remote execution, which Strata does not serve")
    }

    /// BuildGrid's `grpc-server-options`, gRPC core channel arguments (`grpc.keepalive_time_ms: 60000`),
    /// mapped onto every channel's `ConnectionPolicy` and the message limits where Strata has the
    /// setting; a `!channel`'s own option overrides the server-wide one. Each key is an item of its own.
    mutating func grpcServerOptions(_ node: ConfigNode) {
        guard case .mapping(let mapping) = node.node else {
            record(node.error("expected a mapping of gRPC channel arguments, e.g. grpc.keepalive_time_ms: 60000"))
            return
        }
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else {
                record(node.child(keyNode, "?").error("keys must be strings"))
                continue
            }
            var option = node.child(value, key)
            option.keyLine = keyNode.mark?.line
            _ = check { builder throws(ConfigError) in try builder.grpcServerOption(key, option) }
        }
    }

    private mutating func grpcServerOption(_ key: String, _ option: ConfigNode) throws(ConfigError) {
        /// gRPC core's "infinite" for a time (INT_MAX milliseconds): no limit.
        func milliseconds() throws(ConfigError) -> Duration? {
            let value = try option.int(minimum: 1)
            return value >= Int(Int32.max) ? nil : .milliseconds(value)
        }
        switch key {
        case "grpc.max_connection_idle_ms":
            serverConnectionPolicy.idleTimeout = try milliseconds() ?? .seconds(Duration.maximumSettingSeconds)
        case "grpc.max_connection_age_ms": serverConnectionPolicy.maxAge = try milliseconds()
        case "grpc.max_connection_age_grace_ms": serverConnectionPolicy.maxAgeGrace = try milliseconds()
        case "grpc.keepalive_time_ms":
            serverConnectionPolicy.keepaliveTime = try milliseconds() ?? .seconds(Duration.maximumSettingSeconds)
        case "grpc.keepalive_timeout_ms": serverConnectionPolicy.keepaliveTimeout = try milliseconds() ?? .seconds(Duration.maximumSettingSeconds)
        case "grpc.keepalive_permit_without_calls":
            let value = try option.int(minimum: 0)
            guard value <= 1 else { throw option.error("expected 0 or 1") }
            serverConnectionPolicy.clientPingsWithoutCalls = value == 1
        case "grpc.http2.min_recv_ping_interval_without_data_ms":
            serverConnectionPolicy.clientPingMinimumInterval = try milliseconds() ?? .seconds(Duration.maximumSettingSeconds)
        case "grpc.so_reuseport":
            // 0 (a port no other server may share) is what Strata does: it refuses a port another
            // process listens on, and shares one only between its own event loops.
            if try option.int(minimum: 0) != 0 {
                ignore(option, because: "Strata never lets another server share its port")
            }
        case "grpc.max_receive_message_length", "grpc.max_send_message_length":
            try messageLengthLimit(key, option)
        case "grpc.max_concurrent_streams":
            // What `max-concurrent-streams` on a `!channel` sets (HTTP/2's setting is 31 bits).
            let streams = try option.int(minimum: 1)
            guard streams <= Int(Int32.max) else { throw option.error("must be at most \(Int32.max)") }
            serverConnectionPolicy.maxConcurrentStreams = streams
        default:
            ignore(option, because: "Strata's gRPC transport has no equivalent of this channel argument")
        }
    }

    /// Strata's largest message either way is a batch (`max_batch_total_size_bytes`, announced in
    /// Capabilities) plus 1 MiB of digests and framing (FindMissingBlobs requests excepted, accepted up
    /// to 16 MiB). A smaller gRPC limit lowers the batch limit to fit under it; -1 (no limit) or a
    /// larger one changes nothing.
    private mutating func messageLengthLimit(_ key: String, _ option: ConfigNode) throws(ConfigError) {
        let value = try option.int(minimum: -1)
        let framing: Int64 = 1 << 20
        let current = maxBatchTotalSizeBytes + framing
        guard value != -1, Int64(value) < current else {
            let what = key == "grpc.max_send_message_length"
                ? "responses are at most \(current) bytes (the batch limit announced in Capabilities plus 1 MiB)"
                : "requests are at most \(current) bytes (the batch limit announced in Capabilities plus 1 MiB; FindMissingBlobs up to 16 MiB)"
            ignore(option, because: "Strata's \(what), which this allows")
            return
        }
        guard Int64(value) >= 2 * framing else {
            throw option.error("must be at least \(2 * framing) bytes (or -1): Strata's batch limit is this less 1 MiB of framing, and batches under 1 MiB make uploads of small blobs slow")
        }
        maxBatchTotalSizeBytes = Int64(value) - framing
    }

    /// `!cas` options of BuildGrid that Strata accepts without implementing.
    mutating func casBuildGridOptions(_ options: [String: ConfigNode]) throws(ConfigError) {
        if let subjects = options["chunked-by-buildbox-allowed-subjects"] {
            _ = try subjects.sequence().map { node throws(ConfigError) in try node.string() }
            ignore(subjects, because: "Strata's SpliceBlob verifies every spliced blob, whoever the client, and keeps no chunk mappings")
        }
        for key in ["tree-cache-size", "tree-cache-ttl-minutes", "tree-cache-redis"] {
            guard let node = options[key] else { continue }
            switch key {
            case "tree-cache-size": _ = try node.int(minimum: 0)
            case "tree-cache-ttl-minutes": _ = try node.secondsNumber()
            default: break  // an alias of a !redis-connection, checked where it is declared; not connected
            }
            ignore(node, because: "Strata keeps no cache of GetTree responses; GetTree reads the directories from the storage")
        }
    }

    /// `!bytestream` options of BuildGrid that Strata accepts without implementing.
    mutating func byteStreamBuildGridOptions(_ options: [String: ConfigNode]) throws(ConfigError) {
        if let node = options["disable-overwrite-early-return"], try node.bool() {
            ignore(node, because: "a Write of a blob Strata holds always completes at once, as the REAPI allows; a stored copy a read finds damaged is removed (verify-reads), so the next upload writes it again")
        }
        if let node = options["stream-blob"], try !node.bool() {
            ignore(node, because: "Strata always streams a blob from its storage")
        }
    }
}
