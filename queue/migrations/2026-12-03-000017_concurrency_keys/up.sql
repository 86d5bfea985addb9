-- Flow control: a job may carry a concurrency key (a tenant, an account,
-- anything the application names) and the most jobs of that key that may
-- run at once. Columns without a default: added to the catalog only, no
-- row rewritten. The next migrations index keyed ready jobs apart.
ALTER TABLE queue_jobs ADD COLUMN IF NOT EXISTS concurrency_key TEXT;
ALTER TABLE queue_jobs ADD COLUMN IF NOT EXISTS max_concurrent INTEGER;

-- Claims up to `p_limit` ready jobs of queue `p_queue` that have a
-- concurrency key, for the calling session (a worker's lock session),
-- taking the keys in turn: the keys in order after `p_cursor` (wrapping
-- around), a few jobs a key and a turn, until `p_limit` are taken or a
-- whole round of turns takes nothing. A tenant's backlog thus costs the
-- others one turn, whatever its size.
--
-- A key's jobs run only in a "slot" of the key: `max_concurrent` (that of
-- the key's first ready job) advisory locks. A worker runs the jobs it
-- claimed one after the other, so its session needs one slot of a key,
-- however many of the key's jobs it holds: it takes one with the key's
-- first job, and holds it until the worker lets go of everything it holds
-- (the end of its batch), or its session ends (a dead worker frees it at
-- once). The slots it holds are listed in its setting `skiplock.slots`,
-- which the runner's release of everything clears. A turn takes up to a
-- quarter of the claim from a key (one job of a small claim).
--
-- Each job is locked as the plain claim locks it (see `job_lock!` in
-- queue/src/storage/mod.rs), then read in a snapshot taken after the
-- lock: a job completed or failed and released meanwhile is not returned. The jobs the session holds are in `p_exclude` (the
-- caller's) or taken by this call: their locks would be granted again. Jobs of
-- types not in `p_types`, or in `p_exclude`, are not taken; none while
-- the queue is paused. A call visits at most `4 * p_limit + 32` keys; its
-- last row has a NULL id, names the last key visited (the next claim's
-- cursor) and says (in `keyed`) whether the turn was cut short there.
CREATE OR REPLACE FUNCTION queue_claim_keyed(
    p_queue text, p_limit integer, p_exclude bigint[], p_types text[], p_cursor text)
RETURNS TABLE (id bigint, job_type text, payload jsonb, attempts integer, suspect boolean,
               running_by text, keyed boolean, priority smallint, traceparent text,
               concurrency_key text)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    salt bigint := (SELECT i.lock_salt FROM queue_installation i);
    held text := COALESCE(NULLIF(current_setting('skiplock.slots', true), ''), ' ');
    taken integer := 0;
    visits integer := 0;
    k text := NULLIF(p_cursor, '');
    next_key text;
    first_miss text;
    slots integer;
    key_hash integer;
    start integer;
    want integer;
    fresh_slot integer;
    got_ids bigint[];
    n integer;
    cut boolean := false;
    -- Taken by this call: locked by the session, so locked again if tried.
    mine bigint[] := '{}';
BEGIN
    IF p_limit > 0 AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = p_queue) THEN
    LOOP
        -- The next key with ready jobs (after the first one when past the
        -- last), and its limit: that of its first ready job, which is the
        -- first entry of the key in the index.
        SELECT j.concurrency_key, j.max_concurrent INTO next_key, slots FROM queue_jobs j
        WHERE j.queue = p_queue AND j.concurrency_key > COALESCE(k, '')
          AND j.dead_at IS NULL AND NOT j.scheduled AND j.concurrency_key IS NOT NULL
        ORDER BY j.concurrency_key, j.priority DESC, j.id LIMIT 1;
        IF next_key IS NULL AND k IS NOT NULL THEN
            SELECT j.concurrency_key, j.max_concurrent INTO next_key, slots FROM queue_jobs j
            WHERE j.queue = p_queue AND j.concurrency_key > ''
              AND j.dead_at IS NULL AND NOT j.scheduled AND j.concurrency_key IS NOT NULL
            ORDER BY j.concurrency_key, j.priority DESC, j.id LIMIT 1;
        END IF;
        EXIT WHEN next_key IS NULL OR next_key = first_miss;
        -- A turn takes a quarter of the claim at most (one job when the
        -- claim is small), so that the keys alternate within a claim; the
        -- only key with ready jobs (met again at once) takes the rest.
        IF next_key = k THEN
            want := p_limit - taken;
        ELSE
            want := least(greatest(1, p_limit / 4), p_limit - taken);
        END IF;
        k := next_key;
        visits := visits + 1;
        fresh_slot := NULL;
        IF slots IS NOT NULL THEN
            -- The session needs one slot of the key, whatever the number of
            -- the key's jobs it holds: its worker runs them one at a time.
            key_hash := (hashtext(p_queue || chr(1) || k) # (salt & 2147483647))::integer;
            IF position(' ' || key_hash || ':' IN held) = 0 THEN
                start := floor(random() * slots)::integer;
                SELECT g % slots INTO fresh_slot FROM generate_series(start, start + slots - 1) g
                WHERE pg_try_advisory_lock(((-3 - g % slots) # (salt >> 32))::integer, key_hash)
                LIMIT 1;
                IF fresh_slot IS NULL THEN
                    want := 0;
                END IF;
            END IF;
        END IF;
        n := 0;
        IF want > 0 THEN
            -- The key's first jobs that no session holds, locked in order
            -- (among the first 64 beyond what the turn wants). The claim
            -- reads them again once every lock is held (see claim_jobs).
            SELECT COALESCE(array_agg(l.id), '{}') INTO got_ids FROM (
                SELECT c.id FROM (
                    SELECT j.id FROM queue_jobs j
                    WHERE j.queue = p_queue AND j.concurrency_key = k
                      AND j.dead_at IS NULL AND NOT j.scheduled
                      AND j.job_type = ANY (p_types) AND j.id <> ALL (p_exclude)
                      AND j.id <> ALL (mine)
                      AND (j.max_concurrent IS NULL) = (slots IS NULL)
                    ORDER BY j.priority DESC, j.id LIMIT 64 + want OFFSET 0) c
                WHERE pg_try_advisory_lock(
                          ((((c.id # salt) >> 32) # 1936420972))::integer,
                          (((c.id # salt) & 4294967295) - 2147483648)::integer)
                LIMIT want) l;
            IF cardinality(got_ids) > 0 THEN
                -- Read after the locks: a job failed or completed meanwhile
                -- is not returned (its lock is let go with everything).
                RETURN QUERY
                    SELECT j.id, j.job_type, j.payload, j.attempts, j.suspect, j.running_by,
                           j.unique_key IS NOT NULL, j.priority, j.traceparent, j.concurrency_key
                    FROM queue_jobs j
                    WHERE j.id = ANY (got_ids) AND j.dead_at IS NULL AND NOT j.scheduled;
                GET DIAGNOSTICS n = ROW_COUNT;
                mine := mine || got_ids;
            END IF;
        END IF;
        IF fresh_slot IS NOT NULL THEN
            IF n > 0 THEN
                held := held || key_hash || ':' || fresh_slot || ' ';
            ELSE
                PERFORM pg_advisory_unlock(((-3 - fresh_slot) # (salt >> 32))::integer, key_hash);
            END IF;
        END IF;
        IF n > 0 THEN
            taken := taken + n;
            first_miss := NULL;
        ELSE
            first_miss := COALESCE(first_miss, k);
        END IF;
        EXIT WHEN taken >= p_limit;
        IF visits >= 4 * p_limit + 32 THEN
            cut := true;
            EXIT;
        END IF;
    END LOOP;
    END IF;
    PERFORM set_config('skiplock.slots', held, false);
    RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::jsonb, NULL::integer, NULL::boolean,
                        NULL::text, cut, NULL::smallint, NULL::text, k;
END
$$;
