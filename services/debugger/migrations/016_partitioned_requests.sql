-- Requests partitioned by the time they were received (issue 28; docs/architecture.md,
-- "Time-partitioned request records"). Catalogue-only work, done in this transaction in
-- milliseconds whatever the table's size: the old table is renamed out of the way and
-- the new, partitioned one created in its place, empty; the service then moves the old
-- rows over in batches while traffic runs (legacy_copy.py) and reads both until it is
-- done. Generic on purpose: columns, defaults, checks and indexes are read from the old
-- table, whatever migrations before this one added.
ALTER TABLE debugger.requests RENAME TO requests_unpartitioned;

CREATE TABLE debugger.requests (
    LIKE debugger.requests_unpartitioned
    INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE
    INCLUDING COMMENTS
) PARTITION BY RANGE (received_at);
-- A unique key must hold the partition key: the id with its time. Every event about a
-- request carries the request's own `received_at`, so the pair is as unique as the id.
ALTER TABLE debugger.requests ADD CONSTRAINT requests_pkey_partitioned
    PRIMARY KEY (id, received_at);

-- Each index of the old table (renamed old_<name>) again on the new one, same name, same
-- definition; on a partitioned table each partition gets its own.
DO $$
DECLARE
    old record;
BEGIN
    FOR old IN
        SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
               i.indisprimary AS is_primary, i.indisunique AS is_unique
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'debugger.requests_unpartitioned'::regclass
    LOOP
        EXECUTE format('ALTER INDEX debugger.%I RENAME TO %I', old.name, left('old_' || old.name, 63));
        IF old.is_primary THEN
            CONTINUE;
        END IF;
        IF old.is_unique THEN
            -- A unique index without received_at cannot exist on a partitioned table:
            -- refuse loudly rather than drop a constraint silently.
            RAISE EXCEPTION 'unique index % on debugger.requests needs received_at', old.name;
        END IF;
        EXECUTE regexp_replace(
            old.definition, ' ON (debugger\.)?requests_unpartitioned ', ' ON debugger.requests '
        );
    END LOOP;
END $$;

-- Where a row goes when no partition covers its time (the periodic job creates them
-- ahead): expected empty; the job moves what lands here into its own partition.
CREATE TABLE debugger.requests_default PARTITION OF debugger.requests DEFAULT;

-- Yesterday, today and the next two days (UTC), so that no row waits for the first run
-- of the job.
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                                      (now() AT TIME ZONE 'UTC')::date + 2, '1 day')::date
    LOOP
        EXECUTE format(
            'CREATE TABLE debugger.%I PARTITION OF debugger.requests FOR VALUES FROM (%L) TO (%L)',
            'requests_p' || to_char(day, 'YYYYMMDD'),
            (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC')
        );
    END LOOP;
END $$;
