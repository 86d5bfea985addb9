-- Flow control: a job may carry a concurrency key (a tenant, an account,
-- anything the application names) and the most jobs of that key that may
-- run at once. Columns without a default: added to the catalog only, no
-- row rewritten. The next migrations index keyed ready jobs apart.
ALTER TABLE queue_jobs ADD COLUMN IF NOT EXISTS concurrency_key TEXT;
ALTER TABLE queue_jobs ADD COLUMN IF NOT EXISTS max_concurrent INTEGER;

-- Claims up to `p_limit` ready jobs of queue `p_queue` that have a
-- concurrency key, for the calling session (a worker's lock session),
-- taking the keys in turn: the keys in order after `p_cursor` (wrapping
-- around), one job a key and a turn, until `p_limit` are taken or a whole
-- turn takes nothing. A tenant's backlog thus costs the others one job a
-- turn, whatever its size.
--
-- A key's job runs only in a free "slot" of its key: `max_concurrent`
-- (of the key's first ready job) advisory locks, one taken per job on the
-- calling session and held until the worker lets go of everything it
-- holds (the end of its batch), or its session ends (a dead worker frees
-- them at once). A session holds one slot of a key at most: the slots it
-- holds are listed in its setting `skiplock.slots`, which the runner's
-- release of everything clears. (Advisory locks are re-entrant: a slot the
-- session holds would be granted to it again.) Keys without a limit are
-- taken again in later turns of the same call.
--
-- Each job is locked as the plain claim locks it (see `job_lock!` in
-- queue/src/storage/mod.rs), then read again in a snapshot taken after
-- the lock: a job completed and released meanwhile is let go. The jobs
-- the session holds are in `p_exclude` (the caller's) or taken by this
-- call: their locks would be granted again. Jobs of
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
    slot integer;
    start integer;
    s integer;
    candidate bigint;
    got boolean;
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
        k := next_key;
        visits := visits + 1;
        slot := NULL;
        got := false;
        IF slots IS NOT NULL THEN
            key_hash := (hashtext(p_queue || chr(1) || k) # (salt & 2147483647))::integer;
            -- One slot of a key a session: a second job of the key would
            -- wait behind the first in the worker's batch, holding a slot.
            IF position(' ' || key_hash || ':' IN held) = 0 THEN
                start := floor(random() * slots)::integer;
                FOR i IN 0 .. slots - 1 LOOP
                    s := (start + i) % slots;
                    IF pg_try_advisory_lock(((-3 - s) # (salt >> 32))::integer, key_hash) THEN
                        slot := s;
                        EXIT;
                    END IF;
                END LOOP;
            END IF;
        END IF;
        IF slots IS NULL OR slot IS NOT NULL THEN
            FOR candidate IN
                SELECT j.id FROM queue_jobs j
                WHERE j.queue = p_queue AND j.concurrency_key = k
                  AND j.dead_at IS NULL AND NOT j.scheduled
                  AND j.job_type = ANY (p_types) AND j.id <> ALL (p_exclude)
                  AND j.id <> ALL (mine)
                  AND CASE WHEN slot IS NULL THEN j.max_concurrent IS NULL
                           ELSE j.max_concurrent > slot END
                ORDER BY j.priority DESC, j.id LIMIT 64
            LOOP
                IF pg_try_advisory_lock(
                       ((((candidate # salt) >> 32) # 1936420972))::integer,
                       (((candidate # salt) & 4294967295) - 2147483648)::integer) THEN
                    RETURN QUERY
                        SELECT j.id, j.job_type, j.payload, j.attempts, j.suspect, j.running_by,
                               j.unique_key IS NOT NULL, j.priority, j.traceparent,
                               j.concurrency_key
                        FROM queue_jobs j
                        WHERE j.id = candidate AND j.dead_at IS NULL AND NOT j.scheduled;
                    IF FOUND THEN
                        got := true;
                        mine := mine || candidate;
                        EXIT;
                    END IF;
                    PERFORM pg_advisory_unlock(
                        ((((candidate # salt) >> 32) # 1936420972))::integer,
                        (((candidate # salt) & 4294967295) - 2147483648)::integer);
                END IF;
            END LOOP;
            IF got THEN
                taken := taken + 1;
                first_miss := NULL;
                IF slot IS NOT NULL THEN
                    held := held || key_hash || ':' || slot || ' ';
                END IF;
            ELSIF slot IS NOT NULL THEN
                PERFORM pg_advisory_unlock(((-3 - slot) # (salt >> 32))::integer, key_hash);
            END IF;
        END IF;
        IF NOT got THEN
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
