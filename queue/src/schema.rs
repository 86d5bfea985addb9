//! The diesel description of the jobs table. The table itself is created by
//! the embedded migrations in `queue/migrations/`. `traceparent` is left
//! out (diesel's tables hold 16 columns without a feature that slows every
//! build): only the `'static` statements in `storage/` read and write it.

diesel::table! {
    /// One row per job that has not completed yet.
    queue_jobs (id) {
        id -> Int8,
        job_type -> Text,
        queue -> Text,
        priority -> Int2,
        payload -> Jsonb,
        created_at -> Timestamptz,
        run_at -> Timestamptz,
        attempts -> Int4,
        first_failed_at -> Nullable<Timestamptz>,
        last_failed_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        dead_at -> Nullable<Timestamptz>,
        scheduled -> Bool,
        suspect -> Bool,
        running_by -> Nullable<Text>,
        unique_key -> Nullable<Text>,
    }
}
