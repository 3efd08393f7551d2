//! Table names, migrations and the SQL text of every statement the store sends.
//!
//! Names are validated by [`PostgresConfig::validate`] (ASCII letters, digits, `_`), so
//! they are safe to splice into SQL; they are double-quoted anyway to keep their case.

use sqlx::{Connection, Executor, PgConnection};

use eventfold_core::Result;

use crate::config::PostgresConfig;
use crate::error::{sqlx_error, Target};

/// The schema version this build writes and expects.
pub const SCHEMA_VERSION: i64 = 6;

/// Advisory-lock class (first key of the two-key form) for the id allocation section.
const LOCK_CLASS_ALLOCATE: i32 = 0x4546_0001; // "EF" 1
/// Advisory-lock class for migrations.
pub(crate) const LOCK_CLASS_MIGRATE: i32 = 0x4546_0002;

/// A range of one stream's records from `table`, by version in `order` (`ASC`/`DESC`).
fn select_stream(columns: &str, table: &str, order: &str) -> String {
    format!(
        "SELECT {columns} FROM {table} \
         WHERE stream_id = $1 AND version > $2 AND version <= $3 \
         ORDER BY version {order} LIMIT $4"
    )
}

/// Every name and statement of one store, computed once from its configuration.
#[derive(Debug)]
pub(crate) struct Sql {
    pub schema_ident: String,
    pub schema_version: String,
    pub schema_version_regclass: String,
    pub events: String,
    pub snapshots: String,
    pub tracking: String,
    pub id_seq: String,
    pub stamp_seq: String,
    pub record_fn: String,
    pub tracking_constraint: String,
    pub contiguity_constraint: String,
    /// The `(topic, id)` index of the events table (v6), unqualified: it lives in the
    /// table's schema.
    pub topic_index: String,
    pub channel: String,
    pub lock_key: i32,
    pub writer_class: i32,
    pub horizon_fn: String,
    pub notifications_fn: String,
    pub max_fn: String,
    pub final_id_fn: String,
    pub writer_announcement_class: i32,

    /// A recording of one event (the common command): no tracking, no NOTIFY.
    pub record_one: String,
    /// One event and one snapshot.
    pub record_one_with_snapshot: String,
    /// Any recording (events of several streams, snapshots, tracking), no NOTIFY.
    pub record_any: String,
    /// Any recording, with the wake-up NOTIFY inside the transaction.
    pub record_any_notify: String,
    /// Any recording inside a host transaction: NOTIFY inside, and one announcement per
    /// transaction however many recordings it makes.
    pub record_in_host: String,
    /// [`crate::Ordering::TableLock`]: taken before recording.
    pub lock_events: String,
    pub select_events_asc: String,
    pub select_events_desc: String,
    pub select_snapshots_asc: String,
    pub select_snapshots_desc: String,
    pub load: String,
    pub notifications: String,
    pub max_notification_id: String,
    pub tracking_position: String,
    pub move_tracking: String,
    pub notify: String,
    /// Takes the per-stream append locks `$1` (int4 keys, sorted), in order.
    pub lock_streams: String,
    /// The latest stored version of each stream of `$1`.
    pub stream_heads: String,
    /// One append inside a host transaction, in one statement when it can
    /// ([`Writers::append_one`]).
    pub append_one_in_host: String,
    /// Every follower with a position, by name.
    pub followers: String,
}

/// The second key of a transaction's writer lock: the low 32 bits of its xid, as int4.
fn writer_key(xid: &str) -> String {
    format!("({xid}::text::bigint % 4294967296 - 2147483648)::integer")
}

/// 32-bit FNV-1a, as a stable key for advisory locks.
pub(crate) fn fnv1a(text: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl Sql {
    pub fn new(config: &PostgresConfig) -> Self {
        let schema = &config.schema;
        let p = &config.table_prefix;
        let q = |name: &str| format!("\"{schema}\".\"{p}{name}\"");
        let events = q("events");
        let snapshots = q("snapshots");
        let tracking = q("tracking");
        let record_fn = q("record");
        let key_text = format!("{schema}.{p}");
        let mut channel = format!("{schema}.{p}events");
        if channel.len() > 63 {
            // NOTIFY channels are identifiers: at most 63 bytes. Keep a readable start and
            // make the rest unique.
            channel = format!("{}~{:08x}", &channel[..50], fnv1a(&channel));
        }
        let record_columns = "stream_id, version, topic, occurred_at, state, metadata";
        let snapshot_columns = "stream_id, version, topic, occurred_at, state, NULL::text";
        let notifications_fn = q("notifications");
        let max_fn = q("max_notification_id");
        let final_id_fn = q("final_id");
        let writer_announcement_class = fnv1a(&format!("announcements:{key_text}"));
        let stream_lock_class = fnv1a(&format!("streams:{key_text}"));
        let writers = Writers {
            events: &events,
            snapshots: &snapshots,
            tracking: &tracking,
            id_seq: &q("notification_id_seq"),
            class: writer_announcement_class,
            channel: &channel,
            setting: format!(
                "eventfold.announced_{:08x}",
                u32::from_ne_bytes(writer_announcement_class.to_ne_bytes())
            ),
        };
        Sql {
            record_one: writers.record_one(false),
            record_one_with_snapshot: writers.record_one(true),
            record_any: writers.record_any(false, false),
            record_any_notify: writers.record_any(true, false),
            record_in_host: writers.record_any(true, true),
            append_one_in_host: writers.append_one(stream_lock_class),
            lock_events: format!("LOCK TABLE {events} IN EXCLUSIVE MODE"),
            schema_ident: format!("\"{schema}\""),
            schema_version: q("schema_version"),
            schema_version_regclass: q("schema_version"),
            select_events_asc: select_stream(record_columns, &events, "ASC"),
            select_events_desc: select_stream(record_columns, &events, "DESC"),
            select_snapshots_asc: select_stream(snapshot_columns, &snapshots, "ASC"),
            select_snapshots_desc: select_stream(snapshot_columns, &snapshots, "DESC"),
            // One round trip: the newest snapshot at or below $2, then the events after it.
            load: format!(
                "WITH snap AS ( \
                     SELECT version, topic, occurred_at, state FROM {snapshots} \
                     WHERE stream_id = $1 AND version <= $2 \
                     ORDER BY version DESC LIMIT 1) \
                 SELECT true AS is_snapshot, version, topic, occurred_at, state, \
                        NULL::text AS metadata FROM snap \
                 UNION ALL \
                 (SELECT false, version, topic, occurred_at, state, metadata FROM {events} \
                  WHERE stream_id = $1 AND version <= $2 \
                    AND version > coalesce((SELECT version FROM snap), -9223372036854775808) \
                  ORDER BY version)"
            ),
            notifications: format!("SELECT * FROM {notifications_fn}($1, $2, $3, $4, $5)"),
            max_notification_id: format!("SELECT {max_fn}()"),
            tracking_position: format!("SELECT position FROM {tracking} WHERE follower = $1"),
            followers: format!("SELECT follower, position FROM {tracking} ORDER BY follower"),
            lock_streams: format!(
                "SELECT count(pg_catalog.pg_advisory_xact_lock({stream_lock_class}, k.key)) \
                 FROM unnest($1::integer[]) WITH ORDINALITY AS k(key, ord)"
            ),
            stream_heads: format!(
                "SELECT s.stream_id, (SELECT max(e.version) FROM {events} e \
                                      WHERE e.stream_id = s.stream_id) \
                 FROM unnest($1::text[]) AS s(stream_id)"
            ),
            move_tracking: format!(
                "WITH moved AS ( \
                     INSERT INTO {tracking} AS t (follower, position) VALUES ($1, $2) \
                     ON CONFLICT (follower) DO UPDATE SET position = excluded.position \
                     WHERE t.position < excluded.position \
                     RETURNING position) \
                 SELECT (SELECT position FROM moved) AS moved, \
                        (SELECT position FROM {tracking} WHERE follower = $1) AS current"
            ),
            // A wake-up needs no durability: skip the WAL flush of its commit.
            notify: "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')"
                .to_owned(),
            id_seq: q("notification_id_seq"),
            stamp_seq: q("notification_stamp_seq"),
            tracking_constraint: format!("{p}tracking_pkey"),
            contiguity_constraint: format!("{p}events_contiguous"),
            topic_index: format!("{p}events_topic_id"),
            lock_key: fnv1a(&key_text),
            writer_class: fnv1a(&format!("writers:{key_text}")),
            horizon_fn: q("horizon"),
            notifications_fn,
            max_fn,
            final_id_fn,
            writer_announcement_class,
            channel,
            events,
            snapshots,
            tracking,
            record_fn,
        }
    }

    /// The migrations, oldest first: `(version, description, SQL)`.
    fn migrations(&self) -> Vec<(i64, &'static str, String)> {
        vec![
            (1, "events, snapshots, tracking, record function", self.v1()),
            (
                2,
                "record: allocate a recording's ids with one setval",
                self.record_function(2),
            ),
            (
                3,
                "record: cheaper contiguity check, nextval for one event, no SET search_path",
                self.record_function(3),
            ),
            (
                4,
                "writers announce an id floor instead of stamping rows; record is one SQL statement",
                self.v4(),
            ),
            (
                5,
                "record metadata; the log reads newest first and pages with a bound",
                self.v5(),
            ),
            (
                6,
                "a (topic, id) index; the log filtered by topic reads it, one topic at a time",
                self.v6(),
            ),
        ]
    }

    /// Version 4: the gap-safe protocol of the crate docs. Writers record with one plain
    /// SQL statement (built by [`Writers`]), so the PL/pgSQL `record` function, the stamp
    /// column and its register go; the log is read below [`Sql::final_id_fn`].
    fn v4(&self) -> String {
        let Sql {
            events,
            stamp_seq,
            record_fn,
            horizon_fn,
            notifications_fn,
            max_fn,
            final_id_fn,
            id_seq,
            writer_announcement_class,
            tracking_constraint,
            ..
        } = self;
        let p = tracking_constraint.trim_end_matches("tracking_pkey");
        let class_oid = u32::from_ne_bytes(writer_announcement_class.to_ne_bytes());
        format!(
            r#"
DROP FUNCTION {record_fn}(text[], bigint[], text[], timestamptz[], bytea[], text[], bigint[],
                          text[], timestamptz[], bytea[], text, bigint, boolean, boolean);
DROP FUNCTION {notifications_fn}(bigint, bigint, text[]);
DROP FUNCTION {max_fn}();
DROP FUNCTION {horizon_fn}();
ALTER TABLE {events} DROP CONSTRAINT "{p}events_pkey";
ALTER TABLE {events} DROP COLUMN stamp;
ALTER TABLE {events} ADD CONSTRAINT "{p}events_pkey" PRIMARY KEY (id);
DROP SEQUENCE {stamp_seq};
COMMENT ON TABLE {events} IS 'eventfold: events of every stream; id orders the notification log. Insert only as eventfold does (announcing the writer, see its docs), read the log only through {notifications_fn}.';

-- The last id of the final part of the log: every id up to it was allocated by a
-- transaction that has ended. Each step is its own statement, so each sees the server
-- as it is after the step before; their order matters (see the eventfold-postgres docs).
CREATE FUNCTION {final_id_fn}()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_last bigint;
    v_announced bigint[];
    v_now bigint;
BEGIN
    -- 1. Every id up to v_last has been allocated, each by a writer already announced.
    SELECT last_value - CASE WHEN is_called THEN 0 ELSE 1 END INTO v_last FROM {id_seq};
    -- 2. The announcements still held: "my ids are above this one" (its low 32 bits).
    v_announced := ARRAY(
        SELECT l.objid::bigint FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.classid = {class_oid}::oid AND l.objsubid = 2
          AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()));
    IF cardinality(v_announced) = 0 THEN
        RETURN v_last;
    END IF;
    -- 3. Each announced id is the largest id allocated by now with those low 32 bits.
    SELECT last_value - CASE WHEN is_called THEN 0 ELSE 1 END INTO v_now FROM {id_seq};
    RETURN least(v_last, (
        SELECT min(v_now - ((v_now - (a + 2147483648) % 4294967296) % 4294967296
                            + 4294967296) % 4294967296)
        FROM unnest(v_announced) AS a));
END
$fn$;

-- The gap-safe log read: it runs after {final_id_fn}() returned, so with a newer snapshot.
CREATE FUNCTION {notifications_fn}(p_after bigint, p_limit bigint, p_topics text[])
RETURNS TABLE (id bigint, stream_id text, version bigint, topic text,
               occurred_at timestamptz, state bytea)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_final bigint := {final_id_fn}();
BEGIN
    RETURN QUERY
        SELECT e.id, e.stream_id, e.version, e.topic, e.occurred_at, e.state
        FROM {events} e
        WHERE e.id > p_after AND e.id <= v_final
          AND (p_topics IS NULL OR e.topic = ANY (p_topics))
        ORDER BY e.id
        LIMIT p_limit;
END
$fn$;

CREATE FUNCTION {max_fn}()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_final bigint := {final_id_fn}();
    v_id bigint;
BEGIN
    SELECT e.id INTO v_id FROM {events} e
    WHERE e.id <= v_final
    ORDER BY e.id DESC LIMIT 1;
    RETURN coalesce(v_id, 0);
END
$fn$;
"#
        )
    }

    /// Version 5: a nullable `metadata` column (the JSON text of
    /// [`eventfold_core::Metadata::to_json`], byte for byte), and the log read with an upper
    /// bound and either order, still never past [`Sql::final_id_fn`].
    fn v5(&self) -> String {
        let Sql {
            events,
            notifications_fn,
            final_id_fn,
            ..
        } = self;
        format!(
            r#"
ALTER TABLE {events} ADD COLUMN metadata text;
COMMENT ON COLUMN {events}.metadata IS 'eventfold: JSON object of the record''s metadata (correlation id, headers), NULL when empty';
DROP FUNCTION {notifications_fn}(bigint, bigint, text[]);

-- The gap-safe log read: it runs after {final_id_fn}() returned, so with a newer snapshot.
-- Ids in (p_after, p_before), never above the final id, oldest or newest first.
CREATE FUNCTION {notifications_fn}(p_after bigint, p_before bigint, p_limit bigint,
                                   p_topics text[], p_descending boolean)
RETURNS TABLE (id bigint, stream_id text, version bigint, topic text,
               occurred_at timestamptz, state bytea, metadata text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_final bigint := least({final_id_fn}(), coalesce(p_before - 1, 9223372036854775807));
BEGIN
    IF p_descending THEN
        RETURN QUERY
            SELECT e.id, e.stream_id, e.version, e.topic, e.occurred_at, e.state, e.metadata
            FROM {events} e
            WHERE e.id > p_after AND e.id <= v_final
              AND (p_topics IS NULL OR e.topic = ANY (p_topics))
            ORDER BY e.id DESC
            LIMIT p_limit;
    ELSE
        RETURN QUERY
            SELECT e.id, e.stream_id, e.version, e.topic, e.occurred_at, e.state, e.metadata
            FROM {events} e
            WHERE e.id > p_after AND e.id <= v_final
              AND (p_topics IS NULL OR e.topic = ANY (p_topics))
            ORDER BY e.id
            LIMIT p_limit;
    END IF;
END
$fn$;
"#
        )
    }

    /// Version 6: the `(topic, id)` index SQLite has as `events_topic_id`, and the log read
    /// filtered by topic through it. Each wanted topic is read as its own keyset range of
    /// the index (at most `p_limit` ids), and the ranges merged: one `topic = ANY (..)`
    /// scan would either walk the primary key past every other topic (slow for a rare
    /// topic) or fetch every id of the topics and sort them (slow for a common one).
    /// The range is written as row comparisons, ordered by `(topic, id)`, because only that
    /// index can then serve it: with `topic = ..` a plan made for an unknown topic (plpgsql's
    /// generic plan) walks the primary key and filters, which passes every id for a rare
    /// topic. Unfiltered reads keep the primary-key range scan. The index is built inside the
    /// migration's transaction, so writers wait for it (seconds on a log of millions).
    fn v6(&self) -> String {
        let Sql {
            events,
            notifications_fn,
            final_id_fn,
            topic_index,
            ..
        } = self;
        let columns = "e.id, e.stream_id, e.version, e.topic, e.occurred_at, e.state, e.metadata";
        let unfiltered = |order: &str| {
            format!(
                "SELECT {columns} FROM {events} e
            WHERE e.id > p_after AND e.id <= v_final
            ORDER BY e.id {order}
            LIMIT p_limit"
            )
        };
        let by_topic = |order: &str| {
            format!(
                "SELECT {columns}
            FROM (SELECT DISTINCT u.topic FROM unnest(p_topics) AS u(topic)) AS wanted,
                 LATERAL (SELECT * FROM {events} t
                          WHERE (t.topic, t.id) > (wanted.topic, p_after)
                            AND (t.topic, t.id) <= (wanted.topic, v_final)
                          ORDER BY t.topic {order}, t.id {order}
                          LIMIT p_limit) AS e
            ORDER BY e.id {order}
            LIMIT p_limit"
            )
        };
        let (all_desc, all_asc) = (unfiltered("DESC"), unfiltered("ASC"));
        let (topics_desc, topics_asc) = (by_topic("DESC"), by_topic("ASC"));
        format!(
            r#"
CREATE INDEX "{topic_index}" ON {events} (topic, id);

-- The gap-safe log read: it runs after {final_id_fn}() returned, so with a newer snapshot.
-- Ids in (p_after, p_before), never above the final id, oldest or newest first.
CREATE OR REPLACE FUNCTION {notifications_fn}(p_after bigint, p_before bigint, p_limit bigint,
                                              p_topics text[], p_descending boolean)
RETURNS TABLE (id bigint, stream_id text, version bigint, topic text,
               occurred_at timestamptz, state bytea, metadata text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_final bigint := least({final_id_fn}(), coalesce(p_before - 1, 9223372036854775807));
BEGIN
    IF p_topics IS NULL THEN
        IF p_descending THEN
            RETURN QUERY {all_desc};
        ELSE
            RETURN QUERY {all_asc};
        END IF;
    ELSIF p_descending THEN
        RETURN QUERY {topics_desc};
    ELSE
        RETURN QUERY {topics_asc};
    END IF;
END
$fn$;
"#
        )
    }

    /// The `record(...)` function as migration `version` defines it.
    fn record_function(&self, version: i64) -> String {
        let Sql {
            events,
            snapshots,
            tracking,
            id_seq,
            stamp_seq,
            record_fn,
            channel,
            lock_key,
            writer_class,
            tracking_constraint,
            contiguity_constraint,
            ..
        } = self;
        let own_writer_key = writer_key("v_xid");
        let (create, allocate) = if version == 1 {
            (
                "CREATE",
                format!(
                    "            v_stamp := greatest(v_xid, (SELECT last_value FROM {stamp_seq})::text::xid8);
            PERFORM setval('{stamp_seq}', v_stamp::text::bigint);
            v_ids := ARRAY(SELECT nextval('{id_seq}') FROM generate_series(1, n));
            RAISE SQLSTATE 'EF000';
        EXCEPTION WHEN SQLSTATE 'EF000' THEN
            NULL;
        END;
"
                ),
            )
        } else if version == 2 {
            // Version 2: the whole id range with one setval (no nextval per event).
            (
                "CREATE OR REPLACE",
                format!(
                    "            SELECT greatest(v_xid, s.last_value::text::xid8),
                   i.last_value + CASE WHEN i.is_called THEN 1 ELSE 0 END
              INTO v_stamp, v_first
              FROM {stamp_seq} s, {id_seq} i;
            PERFORM setval('{stamp_seq}', v_stamp::text::bigint),
                    setval('{id_seq}', v_first + n - 1);
            RAISE SQLSTATE 'EF000';
        EXCEPTION WHEN SQLSTATE 'EF000' THEN
            NULL;
        END;
        v_ids := ARRAY(SELECT generate_series(v_first, v_first + n - 1));
"
                ),
            )
        } else {
            // Version 3: one event takes its id with nextval (which writes WAL only every
            // 32 values, where setval writes a record every time); a batch still takes its
            // whole range with one setval.
            (
                "CREATE OR REPLACE",
                format!(
                    "            v_stamp := greatest(v_xid, (SELECT last_value FROM {stamp_seq})::text::pg_catalog.xid8);
            PERFORM pg_catalog.setval('{stamp_seq}', v_stamp::text::bigint);
            IF n = 1 THEN
                v_first := pg_catalog.nextval('{id_seq}');
            ELSE
                SELECT i.last_value + CASE WHEN i.is_called THEN 1 ELSE 0 END
                  INTO v_first FROM {id_seq} i;
                PERFORM pg_catalog.setval('{id_seq}', v_first + n - 1);
            END IF;
            RAISE SQLSTATE 'EF000';
        EXCEPTION WHEN SQLSTATE 'EF000' THEN
            NULL;
        END;
        v_ids := ARRAY(SELECT pg_catalog.generate_series(v_first, v_first + n - 1));
"
                ),
            )
        };
        // Version 3 drops `SET search_path` (a GUC save and restore around every call,
        // ~8 µs): every table and sequence is schema-qualified, the functions are
        // qualified or built in (pg_catalog is searched first), and the function runs
        // with the caller's rights, so the caller's search_path grants nothing new.
        let search_path = if version < 3 {
            "SET search_path = pg_catalog, pg_temp\n"
        } else {
            ""
        };
        // Version 3 checks a recording of one stream (the usual case) with one index
        // probe; the general query (unnest, GROUP BY, anti-join) cost ~30 µs a call.
        let contiguity = if version < 3 {
            "        IF EXISTS (".to_owned()
        } else {
            format!(
                "        IF p_stream_ids[1] = ALL (p_stream_ids) THEN
            -- One stream: the client checked that its versions follow each other, so
            -- only the first one must continue the stored stream.
            IF p_versions[1] > 1 AND NOT EXISTS (
                SELECT 1 FROM {events} e
                WHERE e.stream_id = p_stream_ids[1] AND e.version = p_versions[1] - 1
            ) THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'unique_violation',
                    CONSTRAINT = '{contiguity_constraint}',
                    MESSAGE = 'a stream of this recording does not continue from its latest version';
            END IF;
        ELSIF EXISTS ("
            )
        };
        format!(
            r#"
-- Records a whole recording in the caller's transaction and returns the notification ids.
-- The crate documentation of eventfold-postgres ("Gap-safe order") explains the locks.
{create} FUNCTION {record_fn}(
    p_stream_ids text[], p_versions bigint[], p_topics text[],
    p_occurred_at timestamptz[], p_states bytea[],
    p_snap_stream_ids text[], p_snap_versions bigint[], p_snap_topics text[],
    p_snap_occurred_at timestamptz[], p_snap_states bytea[],
    p_follower text, p_position bigint,
    p_table_lock boolean, p_notify boolean)
RETURNS bigint[]
LANGUAGE plpgsql
{search_path}AS $fn$
DECLARE
    n integer := coalesce(cardinality(p_stream_ids), 0);
    v_ids bigint[] := '{{}}';
    v_xid xid8;
    v_stamp xid8;
    v_first bigint;
BEGIN
    IF p_table_lock THEN
        LOCK TABLE {events} IN EXCLUSIVE MODE;
    END IF;

    IF p_follower IS NOT NULL THEN
        INSERT INTO {tracking} AS t (follower, position) VALUES (p_follower, p_position)
        ON CONFLICT (follower) DO UPDATE SET position = excluded.position
        WHERE t.position < excluded.position;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING
                ERRCODE = 'unique_violation',
                CONSTRAINT = '{tracking_constraint}',
                MESSAGE = format('follower %s is already at or past position %s', p_follower, p_position);
        END IF;
    END IF;

    IF n > 0 THEN
        -- A stream continues only from a version that exists: no gaps, as in the other stores.
{contiguity}
            SELECT 1
            FROM (SELECT r.stream_id, min(r.version) AS first
                  FROM unnest(p_stream_ids, p_versions) AS r(stream_id, version)
                  GROUP BY r.stream_id) f
            WHERE f.first > 1
              AND NOT EXISTS (SELECT 1 FROM {events} e
                              WHERE e.stream_id = f.stream_id AND e.version = f.first - 1)
        ) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'unique_violation',
                CONSTRAINT = '{contiguity_constraint}',
                MESSAGE = 'a stream of this recording does not continue from its latest version';
        END IF;

        -- The writer lock: held from before the allocation until this transaction ends, so
        -- readers can tell that a transaction holding ids is still in flight.
        v_xid := pg_current_xact_id();
        PERFORM pg_advisory_xact_lock({writer_class}, {own_writer_key});

        -- The allocation section: ids and the stamp are taken under a transaction-level
        -- advisory lock inside a subtransaction that is then rolled back, which releases
        -- the lock at once (not at commit) while keeping the sequence values (sequences
        -- are not transactional). Nothing in it waits for another transaction's commit.
        BEGIN
            PERFORM pg_advisory_xact_lock({LOCK_CLASS_ALLOCATE}, {lock_key});
{allocate}
        INSERT INTO {events} (id, stamp, stream_id, version, topic, occurred_at, state)
        SELECT r.id, v_stamp, r.stream_id, r.version, r.topic, r.occurred_at, r.state
        FROM unnest(v_ids, p_stream_ids, p_versions, p_topics, p_occurred_at, p_states)
             AS r(id, stream_id, version, topic, occurred_at, state);

        IF p_notify THEN
            PERFORM pg_notify('{channel}', '');
        END IF;
    END IF;

    IF coalesce(cardinality(p_snap_stream_ids), 0) > 0 THEN
        INSERT INTO {snapshots} (stream_id, version, topic, occurred_at, state)
        SELECT * FROM unnest(p_snap_stream_ids, p_snap_versions, p_snap_topics,
                             p_snap_occurred_at, p_snap_states)
        ON CONFLICT DO NOTHING;
    END IF;

    RETURN v_ids;
END
$fn$;
"#
        )
    }

    fn v1(&self) -> String {
        let Sql {
            events,
            snapshots,
            tracking,
            id_seq,
            stamp_seq,
            record_fn,
            horizon_fn,
            notifications_fn,
            max_fn,
            writer_class,
            tracking_constraint,
            ..
        } = self;
        let p = tracking_constraint.trim_end_matches("tracking_pkey");
        let candidate_key = writer_key("v_candidate");
        let record_function = self.record_function(1);
        format!(
            r#"
CREATE SEQUENCE {id_seq} AS bigint CACHE 1;
CREATE SEQUENCE {stamp_seq} AS bigint MINVALUE 0 START 0 CACHE 1;

CREATE TABLE {events} (
    id          bigint      NOT NULL,
    stamp       xid8        NOT NULL,
    stream_id   text        NOT NULL,
    version     bigint      NOT NULL,
    topic       text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    state       bytea       NOT NULL,
    CONSTRAINT "{p}events_pkey" PRIMARY KEY (id) INCLUDE (stamp),
    CONSTRAINT "{p}events_stream_version_key" UNIQUE (stream_id, version)
);
ALTER SEQUENCE {id_seq} OWNED BY {events}.id;
COMMENT ON TABLE {events} IS 'eventfold: events of every stream; id orders the notification log. Write only through {record_fn}, read the log only through {notifications_fn}.';
COMMENT ON COLUMN {events}.stamp IS 'greatest(id of the inserting transaction, stamp of every lower id)';

CREATE TABLE {snapshots} (
    stream_id   text        NOT NULL,
    version     bigint      NOT NULL,
    topic       text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    state       bytea       NOT NULL,
    CONSTRAINT "{p}snapshots_pkey" PRIMARY KEY (stream_id, version)
);

CREATE TABLE {tracking} (
    follower text   NOT NULL,
    position bigint NOT NULL,
    CONSTRAINT "{tracking_constraint}" PRIMARY KEY (follower) INCLUDE (position)
);

{record_function}

-- How far the log may be read now: rows with id <= last_id and stamp < horizon are
-- final (no transaction can still commit a lower id). Each step is its own statement, so
-- each sees a newer snapshot than the one before; the order of the steps matters.
CREATE FUNCTION {horizon_fn}(OUT last_id bigint, OUT horizon xid8)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_register xid8;
    v_snapshot pg_snapshot;
    v_candidates xid8[];
    v_candidate xid8;
    v_blocking xid8;
BEGIN
    -- 1. Every id up to last_id has been allocated, every stamp so far is <= v_register.
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO last_id FROM {id_seq};
    SELECT last_value::text::xid8 INTO v_register FROM {stamp_seq};
    -- 2. A snapshot taken after that: a writer of those ids still in flight is listed in
    --    it (or lies between its xmax and v_register).
    v_snapshot := pg_current_snapshot();
    v_candidates := ARRAY(
        SELECT x FROM (
            SELECT x FROM pg_snapshot_xip(v_snapshot) AS x WHERE x <= v_register
            UNION
            SELECT s::text::xid8
            FROM generate_series(pg_snapshot_xmax(v_snapshot)::text::bigint,
                                 v_register::text::bigint) AS s
        ) c
        ORDER BY x);
    horizon := (v_register::text::bigint + 1)::text::xid8;
    -- 3. The oldest candidate that still holds its writer lock bounds the horizon. The
    --    probes run in a subtransaction that is rolled back, which releases any lock they
    --    took at once.
    IF cardinality(v_candidates) > 0 THEN
        BEGIN
            FOREACH v_candidate IN ARRAY v_candidates LOOP
                IF NOT pg_try_advisory_xact_lock({writer_class}, {candidate_key}) THEN
                    v_blocking := v_candidate;
                    EXIT;
                END IF;
            END LOOP;
            RAISE SQLSTATE 'EF000';
        EXCEPTION WHEN SQLSTATE 'EF000' THEN
            NULL;
        END;
        IF v_blocking IS NOT NULL THEN
            horizon := v_blocking;
        END IF;
    END IF;
END
$fn$;

-- The gap-safe log read (4. runs with a snapshot newer than the probes of {horizon_fn}).
CREATE FUNCTION {notifications_fn}(p_after bigint, p_limit bigint, p_topics text[])
RETURNS TABLE (id bigint, stream_id text, version bigint, topic text,
               occurred_at timestamptz, state bytea)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    h record;
BEGIN
    SELECT * INTO h FROM {horizon_fn}();
    RETURN QUERY
        SELECT e.id, e.stream_id, e.version, e.topic, e.occurred_at, e.state
        FROM {events} e
        WHERE e.id > p_after AND e.id <= h.last_id AND e.stamp < h.horizon
          AND (p_topics IS NULL OR e.topic = ANY (p_topics))
        ORDER BY e.id
        LIMIT p_limit;
END
$fn$;

CREATE FUNCTION {max_fn}()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    h record;
    v_id bigint;
BEGIN
    SELECT * INTO h FROM {horizon_fn}();
    SELECT e.id INTO v_id FROM {events} e
    WHERE e.id <= h.last_id AND e.stamp < h.horizon
    ORDER BY e.id DESC LIMIT 1;
    RETURN coalesce(v_id, 0);
END
$fn$;
"#
        )
    }
}

/// Builds the writers' statements (schema version 4 on): one plain SQL statement per
/// recording, so a command pays for no PL/pgSQL call (whose per-transaction setup cost more
/// than the insert itself).
///
/// The general statement takes the parameters `$1..$5` (the events' stream ids, versions,
/// topics, times, states), `$6..$10` (the snapshots'), the general ones `$11, $12`
/// (follower, position), and `$13` (the events' metadata, JSON text or NULL). It writes nothing unless every stream continues from its stored
/// latest version (and, with a follower, the follower moved forwards), and it announces
/// the writer before it allocates an id.
struct Writers<'a> {
    events: &'a str,
    snapshots: &'a str,
    tracking: &'a str,
    id_seq: &'a str,
    class: i32,
    channel: &'a str,
    /// A transaction-local setting remembering the announcement of a host transaction.
    setting: String,
}

/// The last id allocated so far, from a row `s` of the id sequence.
const LAST_ALLOCATED: &str = "(s.last_value - CASE WHEN s.is_called THEN 0 ELSE 1 END)";

/// An id as the int4 key of an advisory lock (its low 32 bits).
fn announcement_key(id: &str) -> String {
    format!("({id} % 4294967296 - 2147483648)::integer")
}

impl Writers<'_> {
    /// The `writer` CTE: the announcement, a shared advisory lock (writers never wait for
    /// each other) keyed by the last id allocated before ours, held until the transaction
    /// ends. Its `id_seq` column feeds `nextval`, so no id is taken before it exists, and
    /// it is MATERIALIZED (evaluated once, never inlined), as is the id allocation.
    fn announce(&self, host: bool, condition: &str) -> String {
        let Writers {
            id_seq,
            class,
            setting,
            ..
        } = self;
        if host {
            // Later recordings of the same transaction reuse its first announcement (lower,
            // so still true), which keeps one lock per transaction, not one per recording.
            let floor = announcement_key("f.floor");
            format!(
                "writer AS MATERIALIZED ( \
                     SELECT pg_catalog.pg_advisory_xact_lock_shared({class}, {floor}) AS announced, \
                            pg_catalog.set_config('{setting}', f.floor::text, true) AS remembered, \
                            '{id_seq}'::regclass AS id_seq \
                     FROM (SELECT coalesce(nullif(pg_catalog.current_setting('{setting}', true), '')::bigint, \
                                           {LAST_ALLOCATED}) AS floor \
                           FROM {id_seq} s) f \
                     WHERE {condition})"
            )
        } else {
            let key = announcement_key(LAST_ALLOCATED);
            format!(
                "writer AS MATERIALIZED ( \
                     SELECT pg_catalog.pg_advisory_xact_lock_shared({class}, {key}) AS announced, \
                            '{id_seq}'::regclass AS id_seq \
                     FROM {id_seq} s \
                     WHERE {condition})"
            )
        }
    }

    fn snapshots_insert(&self, condition: &str) -> String {
        format!(
            "snapshot AS ( \
                 INSERT INTO {snapshots} (stream_id, version, topic, occurred_at, state) \
                 SELECT * FROM unnest($6::text[], $7::bigint[], $8::text[], \
                                                 $9::timestamptz[], $10::bytea[]) \
                 WHERE {condition} \
                 ON CONFLICT DO NOTHING)",
            snapshots = self.snapshots
        )
    }

    /// One event (and at most one snapshot), bound as scalars: `$1..$6` the event's
    /// stream id, version, topic, time, state and metadata, `$7..$11` the snapshot's. One INSERT
    /// over the id sequence's single row: its WHERE clause checks contiguity (one index
    /// probe) and takes the announcement, and a scan applies its WHERE clause to a row
    /// before it computes the row's `nextval`, so the id is taken after the announcement.
    /// Returns the event's `id`, or no row when the stream does not continue from its
    /// latest version. (Its execute time measured ~10 µs below a CTE form of the same steps.)
    fn record_one(&self, with_snapshot: bool) -> String {
        let Writers {
            events,
            snapshots,
            id_seq,
            class,
            ..
        } = self;
        let key = announcement_key(LAST_ALLOCATED);
        let insert = format!(
            "INSERT INTO {events} (id, stream_id, version, topic, occurred_at, state, metadata) \
             SELECT pg_catalog.nextval('{id_seq}'), $1::text, $2::bigint, $3::text, \
                    $4::timestamptz, $5::bytea, $6::text \
             FROM {id_seq} s \
             WHERE ($2::bigint = 1 OR EXISTS (SELECT FROM {events} e \
                                              WHERE e.stream_id = $1::text \
                                                AND e.version = $2::bigint - 1)) \
               AND pg_catalog.pg_advisory_xact_lock_shared({class}, {key})::text = '' \
             RETURNING id"
        );
        if !with_snapshot {
            return insert;
        }
        format!(
            "WITH inserted AS ({insert}), \
             snapshot AS ( \
                 INSERT INTO {snapshots} (stream_id, version, topic, occurred_at, state) \
                 SELECT $7::text, $8::bigint, $9::text, $10::timestamptz, $11::bytea \
                 WHERE EXISTS (SELECT FROM inserted) \
                 ON CONFLICT DO NOTHING) \
             SELECT id FROM inserted"
        )
    }

    /// One append (a change record) inside a host transaction, in one statement: `$1`
    /// stream id, `$2` its append-lock key, `$3..$6` topic, time, state, metadata. It
    /// takes the stream's append lock, then announces (the host's first announcement, if
    /// it made one) and takes the id, and inserts the event at the stream's latest version
    /// + 1 with `ON CONFLICT (stream_id, version) DO NOTHING`. Returns the id, or no row.
    ///
    /// The latest version is read with the statement's snapshot, taken before the lock
    /// was granted; if the lock's previous holder committed an append meanwhile, that
    /// version is taken and the insert does nothing (never a unique violation, which
    /// would abort the host's transaction). Versions of a stream have no gaps, so a stale
    /// read always collides: no row means "run the three-statement append", which then
    /// holds the lock and sees every commit before it (a burnt id is a gap in the log,
    /// which the log allows). Without a collision the version read was the latest.
    fn append_one(&self, stream_lock_class: i32) -> String {
        let Writers {
            events, channel, ..
        } = self;
        let writer = self.announce(true, "EXISTS (SELECT FROM stream_lock)");
        format!(
            "WITH stream_lock AS MATERIALIZED ( \
                 SELECT pg_catalog.pg_advisory_xact_lock({stream_lock_class}, $2::integer)::text \
                     AS locked), \
             {writer}, \
             allocated AS MATERIALIZED (SELECT pg_catalog.nextval(w.id_seq) AS id FROM writer w), \
             inserted AS ( \
                 INSERT INTO {events} (id, stream_id, version, topic, occurred_at, state, metadata) \
                 SELECT a.id, $1::text, \
                        coalesce((SELECT max(e.version) FROM {events} e \
                                  WHERE e.stream_id = $1::text), 0) + 1, \
                        $3::text, $4::timestamptz, $5::bytea, $6::text \
                 FROM allocated a \
                 ON CONFLICT (stream_id, version) DO NOTHING \
                 RETURNING id), \
             notified AS (SELECT pg_catalog.pg_notify('{channel}', '') FROM inserted) \
             SELECT i.id, (SELECT count(*) FROM notified) AS notified FROM inserted i"
        )
    }

    /// Any recording. Returns `(continues boolean, moved boolean, ids bigint[])`: whether
    /// every stream continues from its latest version, whether the follower (if any) moved
    /// forwards, and the ids in the recording's order (empty when nothing was written).
    fn record_any(&self, notify: bool, host: bool) -> String {
        let Writers {
            events, tracking, ..
        } = self;
        let writes =
            "(SELECT ok FROM continues) AND ($11::text IS NULL OR EXISTS (SELECT FROM moved))";
        let writer = self.announce(
            host,
            &format!("{writes} AND coalesce(cardinality($1::text[]), 0) > 0"),
        );
        let snapshot = self.snapshots_insert(writes);
        let notified = if notify {
            format!(
                ", notified AS (SELECT pg_catalog.pg_notify('{}', '') \
                                FROM allocated WHERE ids IS NOT NULL)",
                self.channel
            )
        } else {
            String::new()
        };
        let notified_count = if notify {
            ", (SELECT count(*) FROM notified) AS notified"
        } else {
            ""
        };
        format!(
            "WITH input AS ( \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], \
                                                 $4::timestamptz[], $5::bytea[], $13::text[]) \
                     WITH ORDINALITY AS r(stream_id, version, topic, occurred_at, state, \
                                          metadata, ord)), \
             continues AS ( \
                 SELECT CASE \
                     WHEN coalesce(cardinality($1::text[]), 0) = 0 THEN true \
                     WHEN $1[1] = ALL ($1::text[]) THEN \
                         $2[1] = 1 OR EXISTS (SELECT FROM {events} e \
                                              WHERE e.stream_id = $1[1] \
                                                AND e.version = $2[1] - 1) \
                     ELSE NOT EXISTS ( \
                         SELECT FROM (SELECT stream_id, min(version) AS first FROM input \
                                      GROUP BY stream_id) f \
                         WHERE f.first > 1 \
                           AND NOT EXISTS (SELECT FROM {events} e \
                                           WHERE e.stream_id = f.stream_id \
                                             AND e.version = f.first - 1)) \
                 END AS ok), \
             moved AS ( \
                 INSERT INTO {tracking} AS t (follower, position) \
                 SELECT $11::text, $12::bigint \
                 WHERE $11::text IS NOT NULL AND (SELECT ok FROM continues) \
                 ON CONFLICT (follower) DO UPDATE SET position = excluded.position \
                 WHERE t.position < excluded.position \
                 RETURNING position), \
             {writer}, \
             allocated AS MATERIALIZED ( \
                 SELECT pg_catalog.array_agg(a.id ORDER BY a.id) AS ids \
                 FROM (SELECT pg_catalog.nextval(w.id_seq) AS id \
                       FROM writer w, \
                            pg_catalog.generate_series(1, cardinality($1::text[]))) a), \
             inserted AS ( \
                 INSERT INTO {events} (id, stream_id, version, topic, occurred_at, state, metadata) \
                 SELECT a.ids[i.ord], i.stream_id, i.version, i.topic, i.occurred_at, i.state, \
                        i.metadata \
                 FROM allocated a, input i \
                 WHERE a.ids IS NOT NULL), \
             {snapshot}{notified} \
             SELECT (SELECT ok FROM continues) AS continues, \
                    ($11::text IS NULL OR EXISTS (SELECT FROM moved)) AS moved, \
                    coalesce((SELECT ids FROM allocated), '{{}}') AS ids{notified_count}"
        )
    }
}

/// What [`crate::PostgresStore::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The schema (PostgreSQL namespace) migrated.
    pub schema: String,
    /// The table prefix.
    pub table_prefix: String,
    /// Schema version before (0 = no tables).
    pub from_version: i64,
    /// Schema version after.
    pub to_version: i64,
    /// The migrations applied now, as `(version, description)`; empty when up to date.
    pub applied: Vec<(i64, String)>,
}

impl std::fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.applied.is_empty() {
            write!(
                f,
                "schema {:?} tables {}*: up to date at version {}",
                self.schema, self.table_prefix, self.to_version
            )
        } else {
            write!(
                f,
                "schema {:?} tables {}*: migrated from version {} to {}",
                self.schema, self.table_prefix, self.from_version, self.to_version
            )
        }
    }
}

/// The schema version found in the database (0 when the version table does not exist).
pub(crate) async fn current_version(
    conn: &mut PgConnection,
    sql: &Sql,
    target: &Target,
) -> Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&sql.schema_version_regclass)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sqlx_error(e, target))?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar(&format!("SELECT max(version) FROM {}", sql.schema_version))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| sqlx_error(e, target))?;
    Ok(version.unwrap_or(0))
}

/// Brings the schema to [`SCHEMA_VERSION`], in one transaction, serialised with any
/// concurrent migration of the same schema and prefix.
pub(crate) async fn migrate(
    conn: &mut PgConnection,
    sql: &Sql,
    config: &PostgresConfig,
    target: &Target,
) -> Result<MigrationReport> {
    migrate_up_to(conn, sql, config, target, SCHEMA_VERSION).await
}

/// Brings the schema to `to_version` (at most [`SCHEMA_VERSION`]); tests build older
/// schemas with it to check upgrades.
pub(crate) async fn migrate_up_to(
    conn: &mut PgConnection,
    sql: &Sql,
    config: &PostgresConfig,
    target: &Target,
    to_version: i64,
) -> Result<MigrationReport> {
    let mut tx = conn.begin().await.map_err(|e| sqlx_error(e, target))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS_MIGRATE)
        .bind(sql.lock_key)
        .execute(&mut *tx)
        .await
        .map_err(|e| sqlx_error(e, target))?;
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {table} ( \
             version bigint PRIMARY KEY, \
             description text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        schema = sql.schema_ident,
        table = sql.schema_version,
    );
    // A plain string runs as a simple query: several statements in one round trip.
    (&mut *tx)
        .execute(create.as_str())
        .await
        .map_err(|e| sqlx_error(e, target))?;
    let from_version = current_version(&mut tx, sql, target).await?;
    if from_version > SCHEMA_VERSION {
        return Err(newer_schema(from_version));
    }
    let mut applied = Vec::new();
    for (version, description, text) in sql.migrations() {
        if version <= from_version || version > to_version {
            continue;
        }
        (&mut *tx)
            .execute(text.as_str())
            .await
            .map_err(|e| sqlx_error(e, target))?;
        sqlx::query(&format!(
            "INSERT INTO {} (version, description) VALUES ($1, $2)",
            sql.schema_version
        ))
        .bind(version)
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(|e| sqlx_error(e, target))?;
        applied.push((version, description.to_owned()));
    }
    tx.commit().await.map_err(|e| sqlx_error(e, target))?;
    if !applied.is_empty() {
        tracing::info!(
            schema = %config.schema,
            prefix = %config.table_prefix,
            from_version,
            to_version,
            "migrated eventfold tables"
        );
    }
    Ok(MigrationReport {
        schema: config.schema.clone(),
        table_prefix: config.table_prefix.clone(),
        from_version,
        to_version: from_version.max(to_version),
        applied,
    })
}

pub(crate) fn newer_schema(found: i64) -> eventfold_core::Error {
    eventfold_core::Error::SchemaVersion {
        backend: crate::BACKEND,
        found,
        expected: SCHEMA_VERSION,
        hint: "the database was migrated by a newer eventfold; upgrade this program".to_owned(),
    }
}

pub(crate) fn older_schema(found: i64) -> eventfold_core::Error {
    eventfold_core::Error::SchemaVersion {
        backend: crate::BACKEND,
        found,
        expected: SCHEMA_VERSION,
        hint: "run `eventfold migrate` (or connect with create_tables = true)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_channel_fits() {
        let mut config = PostgresConfig::new("postgres://x");
        let sql = Sql::new(&config);
        assert_eq!(sql.events, "\"public\".\"eventfold_events\"");
        assert_eq!(sql.channel, "public.eventfold_events");
        config.schema = "s".repeat(60);
        let long = Sql::new(&config);
        assert!(long.channel.len() <= 63, "{}", long.channel);
        config.schema = "t".repeat(60);
        assert_ne!(Sql::new(&config).channel, long.channel);
    }
}
