import Foundation
import Logging
import PostgresNIO
import StrataCore

/// Strata's tables, as numbered migrations recorded in `strata_schema_version`.
///
/// All of them run in one transaction under a transaction-scoped advisory lock, so servers starting
/// together apply each version exactly once and a failed migration leaves nothing half done.
///
/// Hashes are `bytea` (32 bytes for SHA-256) rather than hex text: half the size in the table and its
/// primary key, so more of the index stays in memory, and comparisons are plain byte compares.
/// Sizes are `bigint`; the key is (hash, size) because a blob is its hash *and* its size.
enum SQLMigrations {
    static let versions: [(version: Int, statements: [String])] = [
        (1, [
            // Blob bodies of !sql-storage. EXTERNAL storage: no compression (blobs are mostly compressed
            // already), and it lets `substring` fetch only the TOAST chunks of the range it reads.
            """
            CREATE TABLE strata_blobs (
                hash bytea NOT NULL,
                size bigint NOT NULL,
                data bytea NOT NULL,
                PRIMARY KEY (hash, size)
            )
            """,
            "ALTER TABLE strata_blobs ALTER COLUMN data SET STORAGE EXTERNAL",
            // Entries of !sql-index; inline_data holds blobs up to max-inline-blob-size.
            """
            CREATE TABLE strata_index (
                hash bytea NOT NULL,
                size bigint NOT NULL,
                accessed_at timestamptz NOT NULL DEFAULT now(),
                inline_data bytea,
                PRIMARY KEY (hash, size)
            )
            """,
            "CREATE INDEX strata_index_accessed_at ON strata_index (accessed_at)",
            // Running totals of strata_index, kept by statement-level triggers so that totals() is one
            // row read instead of a sum over the table. Statement-level with transition tables: one
            // counter update per statement (a batch counts once), and taken last in the statement, so
            // two batches never wait on each other's index rows while holding the counter.
            """
            CREATE TABLE strata_index_totals (
                id integer PRIMARY KEY CHECK (id = 1),
                bytes bigint NOT NULL,
                blobs bigint NOT NULL
            )
            """,
            "INSERT INTO strata_index_totals VALUES (1, 0, 0)",
            """
            CREATE FUNCTION strata_index_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE strata_index_totals SET bytes = bytes + s.changed_bytes, blobs = blobs + s.changed_blobs
                FROM (SELECT coalesce(sum(size), 0) AS changed_bytes, count(*) AS changed_blobs FROM inserted) s
                WHERE id = 1 AND s.changed_blobs > 0;
                RETURN NULL;
            END $$
            """,
            """
            CREATE FUNCTION strata_index_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE strata_index_totals SET bytes = bytes - s.changed_bytes, blobs = blobs - s.changed_blobs
                FROM (SELECT coalesce(sum(size), 0) AS changed_bytes, count(*) AS changed_blobs FROM deleted) s
                WHERE id = 1 AND s.changed_blobs > 0;
                RETURN NULL;
            END $$
            """,
            """
            CREATE TRIGGER strata_index_inserted AFTER INSERT ON strata_index
            REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION strata_index_count_inserted()
            """,
            """
            CREATE TRIGGER strata_index_deleted AFTER DELETE ON strata_index
            REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION strata_index_count_deleted()
            """,
        ]),
        (2, [
            // When each blob of !sql-storage was stored, for the janitor's grace period: a write stores
            // the blob before its index records it. Rows stored before this version get the time of the
            // migration (a constant default, so no table rewrite), which only delays their check.
            "ALTER TABLE strata_blobs ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now()",
        ]),
        (3, [
            // The "being written" / "being deleted" marks of !sql-index (see IndexedBlobStore): a row
            // per blob while a write or a delete of it is under way. Writes and deletes of one blob
            // serialize on this row's lock; the leases free it when its holder crashed.
            """
            CREATE TABLE strata_index_marks (
                hash bytea NOT NULL,
                size bigint NOT NULL,
                writers integer NOT NULL DEFAULT 0,
                writing_until timestamptz,
                deleting_until timestamptz,
                PRIMARY KEY (hash, size)
            )
            """,
        ]),
        (4, [
            // Which call of removeEntries set a "being deleted" mark: the same call sent again (its
            // first answer lost after the commit) finds the blobs it removed already and returns them.
            "ALTER TABLE strata_index_marks ADD COLUMN deleting_token text",
        ]),
        (5, [
            // Rows of !sql-storage written with `compression: zstd` hold one zstd frame of the blob.
            // A constant default: no table rewrite, and every existing row stays what it was.
            "ALTER TABLE strata_blobs ADD COLUMN compressed boolean NOT NULL DEFAULT false",
        ]),
        (6, [
            // The remote-execution state of SQLScheduler, shared by every process of a deployment.
            // A job is one action in flight (or finished, until pruned); `required_properties` holds its
            // platform's matched properties (length-prefixed "name=value"), so assignment filters with
            // `<@` on the bot's offer in the database before PropertySet.matches confirms in Swift.
            """
            CREATE TABLE strata_jobs (
                id text PRIMARY KEY,
                instance_name text NOT NULL,
                digest_function integer NOT NULL,
                action_hash text NOT NULL,
                action_size bigint NOT NULL,
                action bytea NOT NULL,
                platform bytea NOT NULL,
                required_properties text[] NOT NULL,
                priority integer NOT NULL,
                do_not_cache boolean NOT NULL,
                timeout_ms bigint,
                stage integer NOT NULL,
                cancelled boolean NOT NULL DEFAULT false,
                attempts integer NOT NULL DEFAULT 0,
                queued_at timestamptz NOT NULL DEFAULT now(),
                session_name text,
                bot_id text,
                assigned_at timestamptz,
                leased boolean NOT NULL DEFAULT false,
                response bytea,
                completed_at timestamptz
            )
            """,
            // At most one in-flight cacheable job per action: concurrent Executes of one action from
            // several processes join one job (the loser's insert conflicts and it joins the winner's).
            """
            CREATE UNIQUE INDEX strata_jobs_in_flight ON strata_jobs (instance_name, digest_function, action_hash, action_size)
            WHERE stage < 4 AND NOT do_not_cache
            """,
            "CREATE INDEX strata_jobs_queue ON strata_jobs (instance_name, priority, queued_at, id) WHERE stage = 2",
            "CREATE INDEX strata_jobs_session ON strata_jobs (session_name) WHERE leased",
            "CREATE INDEX strata_jobs_executing ON strata_jobs (assigned_at) WHERE stage = 3",
            "CREATE INDEX strata_jobs_completed ON strata_jobs (completed_at) WHERE stage = 4",
            // The operations clients hold on jobs; `last_watched` is refreshed while a stream is open
            // in any process, for unwatched-operation-timeout.
            """
            CREATE TABLE strata_operations (
                name text PRIMARY KEY,
                job_id text NOT NULL REFERENCES strata_jobs (id) ON DELETE CASCADE,
                instance_name text NOT NULL,
                cancelled boolean NOT NULL DEFAULT false,
                request_metadata bytea NOT NULL,
                last_watched timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX strata_operations_job ON strata_operations (job_id)",
            "CREATE INDEX strata_operations_unwatched ON strata_operations (last_watched) WHERE NOT cancelled",
            // Open bot sessions; a closed or reaped session's row is deleted.
            """
            CREATE TABLE strata_bot_sessions (
                name text PRIMARY KEY,
                instance_name text NOT NULL,
                bot_id text NOT NULL,
                platform bytea NOT NULL,
                offered_properties text[] NOT NULL,
                capacity integer NOT NULL,
                status integer NOT NULL,
                expire_at timestamptz NOT NULL
            )
            """,
            "CREATE INDEX strata_bot_sessions_bot ON strata_bot_sessions (instance_name, bot_id)",
            "CREATE INDEX strata_bot_sessions_expiry ON strata_bot_sessions (expire_at)",
        ]),
        (7, [
            // How far a leased job's lease got (LeaseDelivery: 0 sent, 1 sent again, 2 reported by its
            // bot), shared so that any bots process can tell a lease lost on the way from one dropped.
            // Reset by each assignment; a constant default, so no table rewrite.
            "ALTER TABLE strata_jobs ADD COLUMN lease_delivery integer NOT NULL DEFAULT 0",
        ]),
    ]

    static var latestVersion: Int { versions.last?.version ?? 0 }

    /// Applies the missing versions; returns them.
    static func apply(on connection: PostgresConnection, schema: String?, logger: Logger) async throws -> [Int] {
        try await connection.withTransaction(logger: logger) { connection in
            // Waiting here for another server's migration is expected, not a lock problem: no
            // lock_timeout inside the migration (the query deadline still bounds it).
            try await connection.execute("SET LOCAL lock_timeout = 0", logger: logger)
            let lockName = "strata-schema:\(schema ?? "public")"
            try await connection.execute("SELECT pg_advisory_xact_lock(hashtext(\(lockName)))", logger: logger)
            if let schema {
                try await connection.execute("CREATE SCHEMA IF NOT EXISTS \(unescaped: quoteIdentifier(schema))", logger: logger)
            }
            try await connection.execute(
                """
                CREATE TABLE IF NOT EXISTS strata_schema_version (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """, logger: logger)
            var current = 0
            for try await version in try await connection.query(
                "SELECT coalesce(max(version), 0)::int8 FROM strata_schema_version", logger: logger
            ).decode(Int64.self) {
                current = Int(version)
            }
            guard current <= latestVersion else {
                throw StrataError.internal(
                    "the database schema is at version \(current), newer than this Strata knows (\(latestVersion)): upgrade Strata")
            }
            var applied: [Int] = []
            for migration in versions where migration.version > current {
                for statement in migration.statements {
                    try await connection.execute(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                let version = migration.version
                try await connection.execute("INSERT INTO strata_schema_version (version) VALUES (\(version))", logger: logger)
                applied.append(version)
            }
            if !applied.isEmpty { logger.info("SQL schema migrated", metadata: ["versions": "\(applied)"]) }
            return applied
        }
    }

    static func quoteIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
