//! The little SQL interface both state-store backends speak, so that the store's logic
//! (admission, numbering, corrective actions) is written once.
//!
//! Statements are written with PostgreSQL's numbered placeholders (`$1`, `$2`); the
//! SQLite backend rewrites them to SQLite's `?1`, `?2` (same numbering). Arguments are a
//! [`Param`] each (text, integer or NULL: all the store needs); rows come back as
//! [`Row`]s of [`Value`]s. What really differs between the two databases (a scalar
//! `max` against `GREATEST`, the schema) is asked of [`Sql::backend`].

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;

use super::{StoreError, StoreResult};

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One argument of a statement.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Int(i64),
    Text(&'a str),
    Null,
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}
impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}
impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(Param::Null, Param::Text)
    }
}
impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Param::Null, Param::Text)
    }
}
impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}
impl From<u16> for Param<'_> {
    fn from(v: u16) -> Self {
        Param::Int(i64::from(v))
    }
}

/// `args![a, b]`: the arguments of a statement.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::sql::Param::from($x)),*][..]
    };
}
pub(crate) use args;

/// One column of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

/// A result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    fn col(&self, i: usize) -> StoreResult<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Other(format!("state store: no column {i} in a result row")))
    }

    pub fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        match self.col(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            Value::Int(n) => Err(StoreError::Other(format!(
                "state store: column {i} holds the integer {n} where text was expected"
            ))),
        }
    }

    pub fn text(&self, i: usize) -> StoreResult<String> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Other(format!("state store: column {i} is NULL where text was expected")))
    }

    pub fn int(&self, i: usize) -> StoreResult<i64> {
        match self.col(i)? {
            Value::Int(n) => Ok(*n),
            other => Err(StoreError::Other(format!(
                "state store: column {i} holds {other:?} where an integer was expected"
            ))),
        }
    }
}

/// A connection, or a transaction on one: the store's statements run through this.
pub trait Sql {
    fn backend(&self) -> Backend;
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<u64>;
    /// Runs a query; every row.
    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Vec<Row>>;
    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
    /// The first row; an error when there is none.
    fn query_one(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Row> {
        self.query_opt(sql, args)?
            .ok_or_else(|| StoreError::Other(format!("state store: no row for `{sql}`")))
    }
}

/// A connection the writer thread owns: transactions, and durability on demand.
pub(crate) trait Conn: Send {
    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> StoreResult<()>) -> StoreResult<()>;
    /// Makes everything committed so far durable.
    fn sync(&mut self) -> StoreResult<()>;
    /// The leadership epoch this connection's writes are fenced with (PostgreSQL; a
    /// SQLite store has one node and no fence).
    fn set_epoch(&mut self, _epoch: Option<i64>) -> StoreResult<()> {
        Ok(())
    }
    /// Stores journal records (run, seq, record) in one transaction: all or none.
    fn append(&mut self, rows: &[(&str, u64, &str)]) -> StoreResult<()> {
        self.transaction(&mut |tx| {
            for (run_id, seq, json) in rows {
                tx.execute(super::INSERT_RECORD, args![*run_id, *seq as i64, *json])?;
            }
            Ok(())
        })
    }
}

/// [`Conn::transaction`] for a closure that returns a value.
pub(crate) fn in_tx<T>(c: &mut dyn Conn, f: impl FnOnce(&mut dyn Sql) -> StoreResult<T>) -> StoreResult<T> {
    let mut f = Some(f);
    let mut out = None;
    c.transaction(&mut |sql| {
        let f = f
            .take()
            .ok_or_else(|| StoreError::Other("state store: a transaction ran twice".into()))?;
        out = Some(f(sql)?);
        Ok(())
    })?;
    out.ok_or_else(|| StoreError::Other("state store: a transaction did not run".into()))
}

/// `$1` → `?1`: PostgreSQL's placeholders in SQLite's spelling (same numbers).
pub(crate) fn sqlite_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains('$') {
        return sql.into();
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// A SQLite connection (or transaction: it derefs to one) as [`Sql`].
pub(crate) struct SqliteSql<'a> {
    pub(crate) conn: &'a rusqlite::Connection,
    pub(crate) path: &'a Path,
}

impl SqliteSql<'_> {
    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.to_path_buf(),
            source,
        }
    }
}

fn sqlite_args<'a>(args: &'a [Param<'a>]) -> Vec<rusqlite::types::Value> {
    args.iter()
        .map(|a| match a {
            Param::Int(n) => rusqlite::types::Value::Integer(*n),
            Param::Text(s) => rusqlite::types::Value::Text((*s).to_owned()),
            Param::Null => rusqlite::types::Value::Null,
        })
        .collect()
}

impl Sql for SqliteSql<'_> {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<u64> {
        let sql = sqlite_placeholders(sql);
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let n = st
            .execute(rusqlite::params_from_iter(sqlite_args(args)))
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Vec<Row>> {
        let sql = sqlite_placeholders(sql);
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let n = st.column_count();
        let mut rows = st
            .query(rusqlite::params_from_iter(sqlite_args(args)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i).map_err(|e| self.err(e))? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Real(f) => Value::Int(f as i64),
                    ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                });
            }
            out.push(Row(row));
        }
        Ok(out)
    }
}

/// The SQLite write connection of the writer thread.
pub(crate) struct SqliteConn {
    pub(crate) conn: rusqlite::Connection,
    pub(crate) path: PathBuf,
}

impl Conn for SqliteConn {
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> StoreResult<()>) -> StoreResult<()> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        f(&mut SqliteSql {
            conn: &tx,
            path: &self.path,
        })?;
        tx.commit().map_err(err)
    }

    fn sync(&mut self) -> StoreResult<()> {
        let err = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        self.conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        let r = self.conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()));
        self.conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        r.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_their_numbers() {
        assert_eq!(
            sqlite_placeholders("SELECT $2, $1 WHERE x = '$a' AND y = $10"),
            "SELECT ?2, ?1 WHERE x = '$a' AND y = ?10"
        );
        assert_eq!(sqlite_placeholders("SELECT 1"), "SELECT 1");
    }
}
