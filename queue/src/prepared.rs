//! Fixed SQL text with binds that diesel caches as a prepared statement.
//!
//! `diesel::sql_query` statements are prepared anew on every execution (two
//! round trips); the hot statements of the queue (enqueue, claim) are
//! written here once, parsed once per connection, then run in one round
//! trip each. On a connection whose statement cache is disabled (what an
//! application behind PgBouncer in transaction mode sets, for its own
//! queries as for these), diesel sends each with its binds in one message
//! as an unnamed statement instead, which such a pooler passes through.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{PgConnection, QueryResult, RunQueryDsl};

/// One bind value with its SQL type (`Send`: a statement may be awaited
/// in async code).
pub(crate) trait Bind: Send {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Typed<ST, T>(T, PhantomData<ST>);

impl<ST: Send, T: Send> Bind for Typed<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.0)
    }
}

/// A statement: SQL text with `$1`, `$2`... placeholders, and its binds.
pub(crate) struct Statement<'a> {
    sql: &'static str,
    binds: Vec<Box<dyn Bind + 'a>>,
    cached: bool,
}

impl<'a> Statement<'a> {
    pub(crate) fn new(sql: &'static str) -> Self {
        Statement {
            sql,
            binds: Vec::new(),
            cached: true,
        }
    }

    /// Never a named prepared statement, whatever the connection's cache
    /// (for statements that must run through a pooler that shares server
    /// sessions, such as the check that tells whether one is in between).
    pub(crate) fn uncached(mut self) -> Self {
        self.cached = false;
        self
    }

    /// Adds the next bind (`$1` first).
    pub(crate) fn bind<ST: Send + 'a, T: ToSql<ST, Pg> + Send + 'a>(mut self, value: T) -> Self
    where
        Pg: HasSqlType<ST>,
    {
        self.binds
            .push(Box::new(Typed::<ST, T>(value, PhantomData)));
        self
    }
}

impl QueryFragment<Pg> for Statement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if !self.cached {
            out.unsafe_to_cache_prepared();
        }
        // Copy the text, replacing each `$n` by bind n (diesel numbers binds itself).
        let mut rest = self.sql;
        while let Some(dollar) = rest.find('$') {
            out.push_sql(&rest[..dollar]);
            let digits = rest[dollar + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - dollar - 1, |n| n);
            let n: usize = rest[dollar + 1..dollar + 1 + digits]
                .parse()
                .expect("`$` in queue SQL is always a numbered placeholder");
            self.binds[n - 1].push(&mut out)?;
            rest = &rest[dollar + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl QueryId for Statement<'_> {
    // No static id: diesel caches the statement by its SQL text.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Statement<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for Statement<'_> {}
