// swift-tools-version: 6.1
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "strata",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "strata", targets: ["strata"]),
    ],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.0"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.0"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-async-algorithms.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
    ],
    targets: [
        // Generated from Protos/strata-api.pb by tools/generate-protos.sh; never edited by hand.
        .target(
            name: "StrataAPI",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: []
        ),
        // BLAKE3's official C implementation, compiled by tools/build-deps from Debian's librust-blake3-dev.
        .systemLibrary(name: "CBLAKE3", pkgConfig: "strata_blake3"),
        .target(
            name: "StrataCore",
            dependencies: [
                "CBLAKE3",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        // FastCDC 2020 content-defined chunking (SplitBlob, SpliceBlob).
        .target(
            name: "StrataChunking",
            dependencies: [
                "StrataCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataStorage",
            dependencies: [
                "StrataCore", "StrataCompression",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // C libraries: hiredis (Debian's libhiredis-dev) and libcurl (libcurl4-openssl-dev).
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // zstd (Debian's libzstd-dev): compressed-blobs on the wire and compression at rest.
        .systemLibrary(
            name: "CZstd",
            providers: [.apt(["libzstd-dev"])]
        ),
        .target(
            name: "StrataCompression",
            dependencies: ["StrataCore", "CZstd"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "CStrataCurl",
            linkerSettings: [.linkedLibrary("curl")]
        ),
        // libcurl's HTTP client, shared by S3 and the JWKS fetch of authorization.
        .target(
            name: "StrataHTTPClient",
            dependencies: [
                "CStrataCurl",
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // `authorization:`: who a request comes from (JWT, trusted headers, client certificate) and
        // what the ACL lets it do.
        .target(
            name: "StrataAuth",
            dependencies: [
                "StrataCore", "StrataHTTPClient",
                .product(name: "JWTKit", package: "jwt-kit"),
                // `method: htpasswd`: bcrypt password hashes.
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataRedis",
            dependencies: [
                "StrataCore", "StrataStorage", "StrataActionCache", "CHiredis",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataS3",
            dependencies: [
                "StrataCore", "StrataStorage", "StrataActionCache", "StrataHTTPClient", "StrataCompression",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataSQL",
            dependencies: [
                "StrataCore", "StrataStorage", "StrataCompression", "StrataScheduler", "StrataAPI", "StrataProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // The one conversion between core types (Digest, DigestFunction, StrataError) and REAPI messages.
        .target(
            name: "StrataProto",
            dependencies: ["StrataCore", "StrataAPI"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataRemote",
            dependencies: [
                "StrataProto", "StrataCore", "StrataStorage", "StrataActionCache", "StrataAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // Remote execution's state: the `Scheduler` protocol (jobs, operations, bot sessions), the
        // in-memory scheduler and the platform property sets. The SQL scheduler is in StrataSQL.
        .target(
            name: "StrataScheduler",
            dependencies: [
                "StrataProto", "StrataCore", "StrataAPI", "StrataActionCache",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // The Execution, Operations and Bots gRPC services over a `Scheduler`.
        .target(
            name: "StrataExecution",
            dependencies: [
                "StrataCore", "StrataAPI", "StrataProto", "StrataScheduler", "StrataServer", "StrataStorage", "StrataActionCache",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // `strata worker`: a Remote Workers API bot and its runners.
        .target(
            name: "StrataWorker",
            dependencies: [
                "StrataProto", "StrataCore", "StrataAPI", "StrataRemote",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataActionCache",
            dependencies: [
                "StrataCore", "StrataAPI", "StrataStorage",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataServer",
            dependencies: [
                "StrataProto", "StrataCore", "StrataAPI", "StrataStorage", "StrataActionCache", "StrataAuth", "StrataChunking", "StrataCompression",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                // TLS on `!channel`: the transport's NIOSSL, certificate reloading, X509 parsing.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCertificateReloading", package: "swift-nio-extras"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // The metrics outputs of `monitoring:`: Prometheus's registry and a StatsD writer.
        .target(
            name: "StrataMetrics",
            dependencies: [
                "StrataCore", "StrataStorage",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // HTTP listeners (the monitoring endpoint's /metrics, /status, /healthz, /readyz).
        .target(
            name: "StrataHTTP",
            dependencies: [
                "StrataCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // Bazel's HTTP cache protocol (`!http-channel`): GET/HEAD/PUT of /ac/ and /cas/ on an instance.
        .target(
            name: "StrataHTTPCache",
            dependencies: [
                "StrataCore", "StrataAPI", "StrataStorage", "StrataActionCache", "StrataAuth", "StrataServer", "StrataHTTP",
                "StrataCompression",
                .product(name: "NIOCertificateReloading", package: "swift-nio-extras"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataConfig",
            dependencies: [
                "StrataCore", "StrataStorage", "StrataActionCache", "StrataServer", "StrataMetrics", "StrataHTTP", "StrataHTTPCache",
                "StrataRedis", "StrataS3", "StrataSQL", "StrataRemote", "StrataAuth", "StrataChunking",
                "StrataScheduler", "StrataExecution",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // Log handlers of the commands: swift-log's text lines, or one JSON object per line.
        .target(
            name: "StrataLogging",
            dependencies: [.product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataBench",
            dependencies: [
                "StrataProto", "StrataCore", "StrataAPI", "StrataServer",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "strata",
            dependencies: [
                "StrataConfig", "StrataServer", "StrataBench", "StrataCore", "StrataLogging", "StrataRemote", "StrataMetrics", "StrataHTTP",
                "StrataWorker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "StrataTestSupport",
            dependencies: ["StrataCore", "StrataStorage", "StrataActionCache", "StrataAPI", "StrataScheduler"],
            path: "Tests/StrataTestSupport",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataCoreTests",
            dependencies: ["StrataCore"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataChunkingTests",
            dependencies: ["StrataChunking", "StrataCore", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataAuthTests",
            dependencies: [
                "StrataAuth", "StrataConfig", "StrataServer", "StrataAPI",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataHTTPCacheTests",
            dependencies: [
                "StrataHTTPCache", "StrataConfig", "StrataTestSupport", "StrataCompression",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataCompressionTests",
            dependencies: ["StrataCompression"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataStorageTests",
            dependencies: ["StrataStorage", "StrataTestSupport", "StrataCompression"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataActionCacheTests",
            dependencies: ["StrataActionCache", "StrataTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataConfigTests",
            dependencies: ["StrataConfig", "StrataExecution", "StrataScheduler", "StrataSQL", "StrataMetrics", "StrataTestSupport", "StrataAuth", "StrataChunking", .product(name: "JWTKit", package: "jwt-kit")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataRedisTests",
            dependencies: ["StrataRedis", "StrataTestSupport", .product(name: "CoreMetrics", package: "swift-metrics")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataS3Tests",
            dependencies: ["StrataS3", "StrataTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataSQLTests",
            dependencies: ["StrataSQL", "StrataTestSupport", "StrataScheduler"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataSchedulerTests",
            dependencies: ["StrataScheduler", "StrataTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataExecutionTests",
            dependencies: [
                "StrataExecution", "StrataScheduler", "StrataServer", "StrataConfig", "StrataTestSupport", "StrataAPI",
                "StrataProto", "StrataStorage", "StrataActionCache", "StrataCore", "StrataMetrics",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataWorkerTests",
            dependencies: [
                "StrataWorker", "StrataTestSupport", "StrataAPI", "StrataRemote", "StrataServer", "StrataStorage", "StrataCore", "StrataProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StrataServerTests",
            dependencies: [
                "StrataServer", "StrataConfig", "StrataRemote", "StrataSQL", "StrataTestSupport", "StrataBench", "StrataLogging",
                "StrataMetrics", "StrataHTTP", "StrataChunking", "StrataAuth", "StrataCompression",
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
    ]
)
