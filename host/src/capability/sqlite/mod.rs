//! SQLite: `fermyon:spin/sqlite@2.0.0`, `spin:sqlite/sqlite@3.0.0` and Spin 4's `@3.1.0` (rows
//! as a stream) on embedded SQLite
//! files, one per database label (`.mosaic/sqlite/LABEL.db` unless the runtime config names a
//! path), through sqlx. A component opens only the labels its manifest entry lists in
//! `sqlite_databases`: database per service. Parameters are always bound, never spliced.

mod guest;
pub mod migrations;
mod spin4;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqlitePool;
use sqlx::Sqlite;
use sqlx::{Column, Either, Executor, Row, Statement, TypeInfo, ValueRef};
use tokio::sync::Mutex;

use crate::observe::{OpenSpan, SpanParent};

/// A value crossing the guest boundary (the same variant in v2 and v3).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    pub last_insert_rowid: i64,
    pub changes: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SqlError(pub String);

/// One SQLite database file.
pub struct Database {
    pool: SqlitePool,
    label: String,
}

impl Database {
    pub async fn open(label: &str, path: &Path) -> Result<Self, SqlError> {
        let pool = crate::backends::sqlite_pool(path)
            .await
            .map_err(|err| SqlError(format!("cannot open the database `{label}`: {err}")))?;
        Ok(Self {
            pool,
            label: label.to_string(),
        })
    }

    pub(super) fn failed(&self, err: sqlx::Error) -> SqlError {
        SqlError(format!("database `{}`: {}", self.label, describe(&err)))
    }

    /// A connection of the database's pool, to hold for one guest handle.
    pub async fn acquire(&self) -> Result<HeldConnection, SqlError> {
        let connection = self.pool.acquire().await.map_err(|err| self.failed(err))?;
        Ok(HeldConnection(Some(connection)))
    }

    /// Runs one statement on a connection of the pool (see [`Database::execute_on`]).
    pub async fn execute(&self, statement: &str, parameters: Vec<SqlValue>) -> Result<SqlResult, SqlError> {
        let mut held = self.acquire().await?;
        self.execute_on(&mut held, statement, parameters).await
    }

    /// Runs one statement with bound parameters on `held` and returns its rows (if any) with
    /// the column names, the rowid of the last insert and the number of rows it changed.
    pub async fn execute_on(
        &self,
        held: &mut HeldConnection,
        statement: &str,
        parameters: Vec<SqlValue>,
    ) -> Result<SqlResult, SqlError> {
        let fail = |err: sqlx::Error| self.failed(err);
        let Some(connection) = held.0.as_mut() else {
            return Err(SqlError(format!(
                "database `{}`: the connection was closed",
                self.label
            )));
        };
        let prepared = connection.prepare(statement).await.map_err(fail)?;
        let columns: Vec<String> = prepared.columns().iter().map(|c| c.name().to_string()).collect();
        let mut query = prepared.query();
        for parameter in parameters {
            query = match parameter {
                SqlValue::Integer(v) => query.bind(v),
                SqlValue::Real(v) => query.bind(v),
                SqlValue::Text(v) => query.bind(v),
                SqlValue::Blob(v) => query.bind(v),
                SqlValue::Null => query.bind(Option::<i64>::None),
            };
        }
        let mut result = SqlResult {
            columns,
            ..SqlResult::default()
        };
        let mut stream = connection.fetch_many(query);
        while let Some(item) = stream.try_next().await.map_err(fail)? {
            match item {
                Either::Left(done) => {
                    result.changes += done.rows_affected();
                    result.last_insert_rowid = done.last_insert_rowid();
                }
                Either::Right(row) => {
                    let mut values = Vec::with_capacity(row.len());
                    for index in 0..row.len() {
                        values.push(value_at(&row, index).map_err(fail)?);
                    }
                    result.rows.push(values);
                }
            }
        }
        Ok(result)
    }
}

fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

fn value_at(row: &sqlx::sqlite::SqliteRow, index: usize) -> Result<SqlValue, sqlx::Error> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(SqlValue::Null);
    }
    // SQLite is dynamically typed: the storage class of this value decides.
    let kind = raw.type_info().name().to_ascii_uppercase();
    Ok(match kind.as_str() {
        "INTEGER" | "BOOLEAN" | "INT8" | "BIGINT" => SqlValue::Integer(row.try_get_unchecked::<i64, _>(index)?),
        "REAL" => SqlValue::Real(row.try_get_unchecked::<f64, _>(index)?),
        "BLOB" => SqlValue::Blob(row.try_get_unchecked::<Vec<u8>, _>(index)?),
        _ => SqlValue::Text(row.try_get_unchecked::<String, _>(index)?),
    })
}

/// Every database of the application, opened on first use.
pub struct Databases {
    paths: BTreeMap<String, PathBuf>,
    default_dir: PathBuf,
    open: Mutex<BTreeMap<String, Arc<Database>>>,
    /// A database that cannot be opened counts in `mosaic_backend_errors_total`; a failed
    /// statement does not (SQLite cannot tell a bad statement from a bad file there).
    metrics: Arc<crate::observe::Metrics>,
}

impl Databases {
    pub fn new(paths: BTreeMap<String, PathBuf>, default_dir: PathBuf, metrics: Arc<crate::observe::Metrics>) -> Self {
        Self {
            paths,
            default_dir,
            open: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    pub fn path_of(&self, label: &str) -> PathBuf {
        self.paths
            .get(label)
            .cloned()
            .unwrap_or_else(|| self.default_dir.join(format!("{label}.db")))
    }

    pub async fn open(&self, label: &str) -> Result<Arc<Database>, SqlError> {
        let mut open = self.open.lock().await;
        if let Some(database) = open.get(label) {
            return Ok(database.clone());
        }
        let database = Database::open(label, &self.path_of(label))
            .await
            .inspect_err(|_| self.metrics.record_backend_error("sqlite", "embedded"))?;
        let database = Arc::new(database);
        open.insert(label.to_string(), database.clone());
        Ok(database)
    }
}

/// What one instance may open.
#[derive(Clone)]
pub struct SqliteAccess {
    pub component: Arc<str>,
    pub granted: Arc<[String]>,
    pub databases: Arc<Databases>,
    /// The trace of the request the instance serves: each statement is a span of it (when
    /// spans are exported).
    pub trace: Option<Arc<crate::observe::TraceContext>>,
}

impl SqliteAccess {
    fn span_parent(&self) -> Option<SpanParent> {
        SpanParent::of(self.trace.as_ref(), self.databases.metrics.spans())
    }
}

/// A pooled connection held by one guest handle, so that its statements (a `BEGIN` ... `COMMIT`
/// included) run on one SQLite connection, as in Spin. When it is let go, a transaction the
/// guest left open (it trapped, timed out or never committed) is rolled back before the
/// connection serves anyone else.
pub struct HeldConnection(Option<PoolConnection<Sqlite>>);

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let Some(mut connection) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    // Fails harmlessly ("no transaction is active") in the usual case.
                    let _ = connection.execute("ROLLBACK").await;
                });
            }
            // No runtime to roll back on: close the connection rather than return it.
            Err(_) => drop(connection.detach()),
        }
    }
}

/// An open connection in a guest's resource table (every interface version alike).
pub struct OpenDatabase {
    pub database: Arc<Database>,
    /// Taken from the pool at the handle's first statement, kept until the handle is dropped;
    /// one statement at a time runs on it (a Spin 4 guest may start several at once).
    pub held: Arc<Mutex<Option<HeldConnection>>>,
    pub last_insert_rowid: i64,
    pub changes: u64,
}

impl OpenDatabase {
    pub fn new(database: Arc<Database>) -> OpenDatabase {
        OpenDatabase {
            database,
            held: Arc::default(),
            last_insert_rowid: 0,
            changes: 0,
        }
    }

    /// What a statement on this handle needs, cloned out of the resource table before the
    /// await.
    pub fn statement_target(&self) -> StatementTarget {
        StatementTarget {
            database: self.database.clone(),
            held: self.held.clone(),
            span_parent: None,
        }
    }

    /// Keeps what `last-insert-rowid` and `changes` answer after a statement succeeded.
    pub fn record(&mut self, result: &SqlResult) {
        self.last_insert_rowid = result.last_insert_rowid;
        self.changes = result.changes;
    }
}

/// The database and held connection of one guest handle, for one statement.
pub struct StatementTarget {
    database: Arc<Database>,
    held: Arc<Mutex<Option<HeldConnection>>>,
    /// The request span each statement is a span of, when spans are exported.
    span_parent: Option<SpanParent>,
}

impl StatementTarget {
    /// Runs one statement on the handle's connection (taken from the pool on first use).
    pub async fn run(&self, statement: &str, parameters: Vec<SqlValue>) -> Result<SqlResult, SqlError> {
        let span = match &self.span_parent {
            Some(parent) => parent.statement("sqlite", &self.database.label, statement),
            None => OpenSpan::none(),
        };
        span.end_with(self.run_untraced(statement, parameters).await, ToString::to_string)
    }

    async fn run_untraced(&self, statement: &str, parameters: Vec<SqlValue>) -> Result<SqlResult, SqlError> {
        let mut slot = self.held.lock().await;
        // Taken out for the await: if the call is cut short, dropping it rolls back whatever
        // it left open.
        let mut held = match slot.take() {
            Some(held) => held,
            None => self.database.acquire().await?,
        };
        let outcome = self.database.execute_on(&mut held, statement, parameters).await;
        *slot = Some(held);
        outcome
    }
}

/// Embedded databases are files: nothing to check for readiness.
impl super::Capability for Databases {}

super::guest_view!(
    /// The guest's view of SQLite: its instance's access and resource table.
    SqliteView,
    SqliteImports,
    SqliteAccess,
    sqlite,
    sqlite_view
);

impl super::GuestCapability for Databases {
    type Instance = SqliteAccess;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> SqliteAccess {
        SqliteAccess {
            component: Arc::from(component.name.as_str()),
            granted: component.sqlite_databases.clone(),
            databases: self.clone(),
            trace: None,
        }
    }

    fn add_to_linker<T: super::HasInstance<SqliteAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use crate::capability::bindings::{spin_sqlite, spin_sqlite3, spin_sqlite3_1};
        // fermyon:spin/sqlite@2.0.0 and spin:sqlite/sqlite@3.0.0 and @3.1.0
        spin_sqlite::add_to_linker::<T, SqliteImports>(linker, sqlite_view::<T>)?;
        spin_sqlite3::add_to_linker::<T, SqliteImports>(linker, sqlite_view::<T>)?;
        spin_sqlite3_1::add_to_linker::<T, SqliteImports>(linker, sqlite_view::<T>)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Spin 4 guest may run statements on one handle at once: they take turns on the
    /// handle's one connection, so a transaction holds them all.
    #[tokio::test]
    async fn concurrent_statements_of_one_handle_share_its_transaction() {
        let dir = std::env::temp_dir().join(format!("mosaic-sqlite-concurrent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let databases = Databases::new(BTreeMap::new(), dir.clone(), Arc::default());
        let database = databases.open("default").await.expect("opens");
        let open = OpenDatabase::new(database.clone());
        let run = |statement: &'static str| {
            let target = open.statement_target();
            async move { target.run(statement, Vec::new()).await.expect(statement) }
        };
        run("CREATE TABLE t (v INTEGER)").await;
        run("BEGIN").await;
        let inserts: Vec<_> = (0..4).map(|_| tokio::spawn(run("INSERT INTO t VALUES (1)"))).collect();
        for insert in inserts {
            assert_eq!(insert.await.expect("the insert task").changes, 1);
        }
        run("ROLLBACK").await;
        let counted = database
            .execute("SELECT COUNT(*) FROM t", Vec::new())
            .await
            .expect("counts");
        assert_eq!(
            counted.rows,
            vec![vec![SqlValue::Integer(0)]],
            "an insert ran outside the handle's transaction"
        );
        drop(open);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_is_a_counted_backend_error() {
        let metrics: Arc<crate::observe::Metrics> = Arc::default();
        // A file cannot be a directory: nothing can be created under /dev/null.
        let paths = BTreeMap::from([("broken".to_string(), PathBuf::from("/dev/null/broken.db"))]);
        let databases = Databases::new(paths, std::env::temp_dir(), metrics.clone());
        let err = databases.open("broken").await.err().expect("the open fails");
        assert!(err.0.contains("broken"), "{}", err.0);
        let rendered = metrics.render(&[], &[]);
        assert!(
            rendered.contains("mosaic_backend_errors_total{capability=\"sqlite\",backend=\"embedded\"} 1"),
            "{rendered}"
        );
    }
}
