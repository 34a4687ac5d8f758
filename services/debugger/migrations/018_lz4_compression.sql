-- A request's large values (the step trace, the bodies, the input, the error) are
-- compressed with lz4 instead of pglz when PostgreSQL compresses them (a row past
-- about 2 kB): for a 5 kB trace PostgreSQL spent 10-40 % less CPU a row (bench.debugger
-- --write-cost; noisy on a shared machine), decompressing is cheaper too, for about 1 %
-- more space.
-- Catalogue-only: rows stored before keep their pglz values (both stay readable).
-- On a partitioned table the setting holds for partitions created after it (with
-- `LIKE ... INCLUDING COMPRESSION`, partitions.py), so the existing ones are set one
-- by one. A server built without lz4 keeps pglz.
DO $$
DECLARE
    target regclass;
BEGIN
    FOR target IN
        SELECT 'debugger.requests'::regclass
        UNION ALL
        SELECT inhrelid::regclass FROM pg_inherits
        WHERE inhparent = 'debugger.requests'::regclass
    LOOP
        EXECUTE format(
            'ALTER TABLE %s ALTER COLUMN steps SET COMPRESSION lz4,'
            ' ALTER COLUMN raw_body SET COMPRESSION lz4,'
            ' ALTER COLUMN input SET COMPRESSION lz4,'
            ' ALTER COLUMN response_body SET COMPRESSION lz4,'
            ' ALTER COLUMN error SET COMPRESSION lz4',
            target
        );
    END LOOP;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server: values stay compressed with pglz';
END $$;
