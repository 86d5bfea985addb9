-- Flow control, continued: rate limits (a job's, for its concurrency key or
-- its type) and a queue's own limits, set at run time (`queue_limits`).
-- Columns without a default: added to the catalog only, no row rewritten.
ALTER TABLE queue_jobs ADD COLUMN IF NOT EXISTS rate_limit INTEGER;
ALTER TABLE queue_jobs ADD COLUMN IF NOT EXISTS rate_period_ms INTEGER;

-- A queue's limits, for every runner of every host: at most `max_running`
-- of its jobs run at once, at most `rate_limit` start in any
-- `rate_period_ms` milliseconds. A queue without a row has none.
CREATE TABLE IF NOT EXISTS queue_limits (
    queue TEXT PRIMARY KEY,
    max_running INTEGER CHECK (max_running BETWEEN 1 AND 1000),
    rate_limit INTEGER CHECK (rate_limit BETWEEN 1 AND 1000),
    rate_period_ms INTEGER CHECK (rate_period_ms BETWEEN 1000 AND 86400000),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((rate_limit IS NULL) = (rate_period_ms IS NULL)),
    CHECK (max_running IS NOT NULL OR rate_limit IS NOT NULL)
);

-- The starts of a rate limit's last window (its `rate_limit` most recent
-- at most), by queue and concurrency key ('' for the queue's own limit).
CREATE TABLE IF NOT EXISTS queue_rate_windows (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    starts TIMESTAMPTZ[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (queue, key)
);

-- The window a rate limit of `p_period_ms` counts starts in: the period and
-- a slack, in milliseconds. A start is recorded when its job is claimed, and
-- the worker starts the job within half the slack of sending the claim or
-- gives it back (see `queue_claim_flow`), so the starts themselves are never
-- more than the limit in any period. The slack: a 40th of the period, at
-- least 25 ms, at most a second.
CREATE OR REPLACE FUNCTION queue_rate_span(p_period_ms integer) RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT p_period_ms + least(greatest(p_period_ms / 40, 25), 1000) $$;

-- Whether one more start of limit (`p_queue`, `p_key`) fits in its window
-- now: 0 if it does, with the window's row locked until the caller's
-- transaction ends; else in how many milliseconds it will (-1: unknown,
-- another claim has the row locked and decides meanwhile).
CREATE OR REPLACE FUNCTION queue_rate_open(
    p_queue text, p_key text, p_limit integer, p_period_ms integer) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    w timestamptz[];
    recent timestamptz[];
    span interval := make_interval(secs => queue_rate_span(p_period_ms) / 1000.0);
BEGIN
    SELECT r.starts INTO w FROM queue_rate_windows r
    WHERE r.queue = p_queue AND r.key = p_key FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM queue_rate_windows r WHERE r.queue = p_queue AND r.key = p_key) THEN
            RETURN -1;
        END IF;
        INSERT INTO queue_rate_windows (queue, key) VALUES (p_queue, p_key) ON CONFLICT DO NOTHING;
        SELECT r.starts INTO w FROM queue_rate_windows r
        WHERE r.queue = p_queue AND r.key = p_key FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN -1;
        END IF;
    END IF;
    recent := ARRAY(SELECT s FROM unnest(w) s WHERE s > clock_timestamp() - span ORDER BY s);
    IF cardinality(recent) < p_limit THEN
        RETURN 0;
    END IF;
    -- Room once the oldest starts beyond the limit's have left the window.
    RETURN greatest(1, ceil(extract(epoch FROM
        recent[cardinality(recent) - p_limit + 1] + span - clock_timestamp()) * 1000))::integer;
END
$$;

-- Records a start of limit (`p_queue`, `p_key`) at `p_at` (now), keeping
-- only the window's starts (locked by `queue_rate_open`).
CREATE OR REPLACE FUNCTION queue_rate_record(
    p_queue text, p_key text, p_period_ms integer, p_at timestamptz)
RETURNS void
LANGUAGE sql VOLATILE
AS $$
    UPDATE queue_rate_windows r
    SET starts = ARRAY(
        SELECT s FROM unnest(r.starts || p_at) s
        WHERE s > clock_timestamp() - make_interval(secs => queue_rate_span(p_period_ms) / 1000.0)
        ORDER BY s)
    WHERE r.queue = p_queue AND r.key = p_key
$$;

-- A rate-limited job whose worker could not start it in time (see
-- `queue_claim_flow`): its start counted at `p_at` is taken back from its
-- windows (the queue's, its key's) and, if each has room now, counted
-- again now (the new count's time: the worker has another moment to start
-- it). NULL: it is counted nowhere, and goes back to wait. Waits for the
-- windows' rows.
CREATE OR REPLACE FUNCTION queue_rate_recount(p_id bigint, p_at timestamptz) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    fits boolean := true;
    now_at timestamptz;
    w record;
    kept timestamptz[];
BEGIN
    FOR w IN
        SELECT l.queue, '' AS key, l.rate_limit AS rate, l.rate_period_ms AS period
        FROM queue_jobs j JOIN queue_limits l ON l.queue = j.queue
        WHERE j.id = p_id AND l.rate_limit IS NOT NULL
        UNION ALL
        SELECT j.queue, j.concurrency_key, j.rate_limit, j.rate_period_ms
        FROM queue_jobs j WHERE j.id = p_id AND j.rate_limit IS NOT NULL
        ORDER BY 1, 2
    LOOP
        SELECT r.starts INTO kept FROM queue_rate_windows r
        WHERE r.queue = w.queue AND r.key = w.key FOR UPDATE;
        -- One start counted at p_at taken back.
        kept := COALESCE(kept[1:array_position(kept, p_at) - 1] ||
                         kept[array_position(kept, p_at) + 1:], kept);
        UPDATE queue_rate_windows r SET starts = kept
        WHERE r.queue = w.queue AND r.key = w.key;
        fits := fits AND (SELECT count(*) FROM unnest(kept) s
                          WHERE s > clock_timestamp()
                                    - make_interval(secs => queue_rate_span(w.period) / 1000.0))
                         < w.rate;
    END LOOP;
    IF NOT fits THEN
        RETURN NULL;
    END IF;
    now_at := clock_timestamp();
    PERFORM queue_rate_record(w2.queue, w2.key, w2.period, now_at)
        FROM (SELECT l.queue, '' AS key, l.rate_period_ms AS period
              FROM queue_jobs j JOIN queue_limits l ON l.queue = j.queue
              WHERE j.id = p_id AND l.rate_limit IS NOT NULL
              UNION ALL
              SELECT j.queue, j.concurrency_key, j.rate_period_ms
              FROM queue_jobs j WHERE j.id = p_id AND j.rate_limit IS NOT NULL) w2;
    RETURN now_at::text;
END
$$;

-- Takes a free slot of `p_slots` of limit `p_hash` for the calling session
-- (its advisory lock `(-3 - slot) # salt, hash`; see `queue_claim_keyed`),
-- starting at a random one: the slot, or NULL when all are held.
CREATE OR REPLACE FUNCTION queue_take_slot(p_slots integer, p_hash integer, p_salt bigint)
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
    SELECT g % p_slots FROM (SELECT floor(random() * p_slots)::integer AS start) s,
                            generate_series(s.start, s.start + p_slots - 1) g
    WHERE pg_try_advisory_lock(((-3 - g % p_slots) # (p_salt >> 32))::integer, p_hash)
    LIMIT 1
$$;

-- The claimed jobs `p_ids` as `queue_claim_flow` returns them, read after
-- their locks were taken: a job failed or completed meanwhile is not
-- returned (its lock is let go with everything). A rate-limited job's
-- time to start and when its start was counted come with it.
CREATE OR REPLACE FUNCTION queue_claimed_rows(p_ids bigint[], p_within integer, p_counted text)
RETURNS TABLE (id bigint, job_type text, payload jsonb, attempts integer, suspect boolean,
               running_by text, keyed boolean, priority smallint, traceparent text,
               concurrency_key text, start_within integer, counted_at text)
LANGUAGE sql STABLE
AS $$
    SELECT j.id, j.job_type, j.payload, j.attempts, j.suspect, j.running_by,
           j.unique_key IS NOT NULL, j.priority, j.traceparent, j.concurrency_key,
           p_within, CASE WHEN p_within IS NOT NULL THEN p_counted END
    FROM queue_jobs j
    WHERE j.id = ANY (p_ids) AND j.dead_at IS NULL AND NOT j.scheduled
$$;

-- Claims up to `p_limit` ready jobs of queue `p_queue` under flow control,
-- for the calling session (a worker's lock session). What
-- `queue_claim_keyed` (migration `concurrency_keys`) does for keyed jobs,
-- and also:
--
-- - The queue's own limits (`queue_limits`): its jobs are claimed only in
--   one of `max_running` slots of the queue, held by the session as a key's
--   slot is (its jobs run one at a time), and under its rate limit, one
--   job a claim.
-- - Jobs without a key: up to half the claim when keyed jobs wait (so that
--   neither kind starves the other), all of it otherwise.
-- - A key's rate limit (that of its first ready job, as its concurrency
--   limit): one job of the key when its window has room, the claim's only
--   rate-limited job.
--
-- The last row's `start_within` says in how many milliseconds a full rate
-- window met will have room, if one was. A rate-limited job's `start_within` says within how many milliseconds of
-- sending the claim its worker must start it: half the window's slack (see
-- `queue_rate_span`). Its start is counted now, at `counted_at`; a worker
-- late to start it counts it again (`queue_rate_recount`) or gives it back.
CREATE OR REPLACE FUNCTION queue_claim_flow(
    p_queue text, p_limit integer, p_exclude bigint[], p_types text[], p_cursor text)
RETURNS TABLE (id bigint, job_type text, payload jsonb, attempts integer, suspect boolean,
               running_by text, keyed boolean, priority smallint, traceparent text,
               concurrency_key text, start_within integer, counted_at text)
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
    rate integer;
    period integer;
    key_hash integer;
    want integer;
    fresh_slot integer;
    got_ids bigint[];
    n integer;
    cut boolean := false;
    open boolean := true;
    -- The queue's own limits, and its slot taken by this call.
    q_max integer;
    q_rate integer;
    q_period integer;
    gate_hash integer;
    gate_slot integer;
    within integer;
    has_keyed boolean := false;
    -- The soonest a full rate window met will have room, in milliseconds.
    opens_in integer;
    shut integer;
    -- When this call's rate-limited start is counted.
    counted timestamptz := clock_timestamp();
    -- Taken by this call: locked by the session, so locked again if tried.
    mine bigint[] := '{}';
BEGIN
    IF p_limit > 0 AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = p_queue) THEN
    SELECT l.max_running, l.rate_limit, l.rate_period_ms INTO q_max, q_rate, q_period
    FROM queue_limits l WHERE l.queue = p_queue;
    IF q_max IS NOT NULL THEN
        gate_hash := (hashtext(p_queue || chr(2)) # (salt & 2147483647))::integer;
        IF position(' ' || gate_hash || ':' IN held) = 0 THEN
            gate_slot := queue_take_slot(q_max, gate_hash, salt);
            open := gate_slot IS NOT NULL;
        END IF;
    END IF;
    IF open AND q_rate IS NOT NULL THEN
        shut := queue_rate_open(p_queue, '', q_rate, q_period);
        open := shut = 0;
        opens_in := nullif(greatest(shut, 0), 0);
        p_limit := 1;
        within := (queue_rate_span(q_period) - q_period) / 2;
    END IF;
    IF open THEN
        -- Jobs without a key, from the head of the ready index.
        -- Half of a claim of one job is one job every other claim.
        has_keyed := EXISTS (SELECT 1 FROM queue_jobs j
                             WHERE j.queue = p_queue AND j.concurrency_key IS NOT NULL
                               AND j.dead_at IS NULL AND NOT j.scheduled);
        want := CASE WHEN has_keyed THEN (p_limit + (random() < 0.5)::integer) / 2
                     ELSE p_limit END;
        SELECT COALESCE(array_agg(l.id), '{}') INTO got_ids FROM (
            SELECT c.id FROM (
                SELECT j.id FROM queue_jobs j
                WHERE j.queue = p_queue AND j.dead_at IS NULL AND NOT j.scheduled
                  AND j.concurrency_key IS NULL
                  AND j.job_type = ANY (p_types) AND j.id <> ALL (p_exclude)
                ORDER BY j.priority DESC, j.id OFFSET 0) c
            WHERE pg_try_advisory_lock(
                      ((((c.id # salt) >> 32) # 1936420972))::integer,
                      (((c.id # salt) & 4294967295) - 2147483648)::integer)
            LIMIT want) l;
        IF cardinality(got_ids) > 0 THEN
            RETURN QUERY SELECT * FROM queue_claimed_rows(got_ids, within, counted::text);
            GET DIAGNOSTICS n = ROW_COUNT;
            taken := taken + n;
            mine := mine || got_ids;
        END IF;
    END IF;
    IF open AND has_keyed AND taken < p_limit THEN
    LOOP
        -- The next key with ready jobs (after the first one when past the
        -- last), and its limits: those of its first ready job, which is the
        -- first entry of the key in the index.
        SELECT j.concurrency_key, j.max_concurrent, j.rate_limit, j.rate_period_ms
        INTO next_key, slots, rate, period FROM queue_jobs j
        WHERE j.queue = p_queue AND j.concurrency_key > COALESCE(k, '')
          AND j.dead_at IS NULL AND NOT j.scheduled AND j.concurrency_key IS NOT NULL
        ORDER BY j.concurrency_key, j.priority DESC, j.id LIMIT 1;
        IF next_key IS NULL AND k IS NOT NULL THEN
            SELECT j.concurrency_key, j.max_concurrent, j.rate_limit, j.rate_period_ms
            INTO next_key, slots, rate, period FROM queue_jobs j
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
        IF rate IS NOT NULL THEN
            -- One job a claim, if the key's window has room.
            shut := queue_rate_open(p_queue, k, rate, period);
            IF shut <> 0 THEN
                want := 0;
                opens_in := least(opens_in, nullif(greatest(shut, 0), 0));
            ELSE
                want := 1;
            END IF;
        END IF;
        IF slots IS NOT NULL AND want > 0 THEN
            -- The session needs one slot of the key, whatever the number of
            -- the key's jobs it holds: its worker runs them one at a time.
            key_hash := (hashtext(p_queue || chr(1) || k) # (salt & 2147483647))::integer;
            IF position(' ' || key_hash || ':' IN held) = 0 THEN
                fresh_slot := queue_take_slot(slots, key_hash, salt);
                IF fresh_slot IS NULL THEN
                    want := 0;
                END IF;
            END IF;
        END IF;
        n := 0;
        IF want > 0 THEN
            -- The key's first jobs that no session holds, locked in order,
            -- with the key's limits: the walk passes over the jobs other
            -- workers hold (as many as their claims, however long the
            -- key's backlog). The claim reads them again once every lock is
            -- held (see claim_jobs).
            SELECT COALESCE(array_agg(l.id), '{}') INTO got_ids FROM (
                SELECT c.id FROM (
                    SELECT j.id FROM queue_jobs j
                    WHERE j.queue = p_queue AND j.concurrency_key = k
                      AND j.dead_at IS NULL AND NOT j.scheduled
                      AND j.job_type = ANY (p_types) AND j.id <> ALL (p_exclude)
                      AND j.id <> ALL (mine)
                      AND (j.max_concurrent IS NULL) = (slots IS NULL)
                      AND (j.rate_limit IS NULL) = (rate IS NULL)
                    ORDER BY j.priority DESC, j.id OFFSET 0) c
                WHERE pg_try_advisory_lock(
                          ((((c.id # salt) >> 32) # 1936420972))::integer,
                          (((c.id # salt) & 4294967295) - 2147483648)::integer)
                LIMIT want) l;
            IF cardinality(got_ids) > 0 THEN
                RETURN QUERY SELECT * FROM queue_claimed_rows(
                    got_ids,
                    least(within, CASE WHEN rate IS NOT NULL
                                       THEN (queue_rate_span(period) - period) / 2 END),
                    counted::text);
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
            IF rate IS NOT NULL THEN
                -- The claim's only rate-limited job: its worker runs it first.
                PERFORM queue_rate_record(p_queue, k, period, counted);
                EXIT;
            END IF;
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
    IF q_rate IS NOT NULL AND taken > 0 THEN
        PERFORM queue_rate_record(p_queue, '', q_period, counted);
    END IF;
    IF gate_slot IS NOT NULL THEN
        IF taken > 0 THEN
            held := held || gate_hash || ':' || gate_slot || ' ';
        ELSE
            PERFORM pg_advisory_unlock(((-3 - gate_slot) # (salt >> 32))::integer, gate_hash);
        END IF;
    END IF;
    END IF;
    PERFORM set_config('skiplock.slots', held, false);
    RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::jsonb, NULL::integer, NULL::boolean,
                        NULL::text, cut, NULL::smallint, NULL::text, k, opens_in, NULL::text;
END
$$;
