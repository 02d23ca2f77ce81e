//! MySQL (and MariaDB): `fermyon:spin/mysql@2.0.0` and Spin 4's `spin:mysql/mysql@3.0.0`
//! (async functions, rows as a stream) on a real server through a pool per address (sqlx). A
//! guest opens an address `mysql://USER:PASSWORD@HOST:PORT/DATABASE` checked against its
//! `allowed_outbound_hosts` (`mysql://HOST:PORT`, port 3306 by default), as in Spin; the
//! connection is the guest's alone until it drops it, so transactions work. Parameters (`?`)
//! are always bound. Values are mapped as Spin maps them (`values`).

mod guest;
pub mod values;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{Executor as _, MySql, MySqlPool};
use tokio::sync::Mutex;

use crate::backends::redact_mysql as redact;
use crate::capability::bindings::spin_rdbms_types as rdbms;
use crate::observe::{OpenSpan, SpanParent};
use values::{DbValue, ParameterValue};

/// Connections per address, shared by every instance.
const POOL_SIZE: u32 = 16;

/// Rows a query may read ahead of a guest that reads them as a stream.
pub const ROWS_AHEAD: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum MysqlError {
    ConnectionFailed(String),
    BadParameter(String),
    QueryFailed(String),
    ValueConversionFailed(String),
    Other(String),
}

impl MysqlError {
    /// The error of a statement on the connection to `address` (shown without password).
    fn from_query(err: sqlx::Error, address: &str) -> Self {
        match err {
            sqlx::Error::Database(db) => MysqlError::QueryFailed(db.to_string()),
            sqlx::Error::Encode(why) => MysqlError::BadParameter(why.to_string()),
            sqlx::Error::ColumnDecode { index, source } => {
                MysqlError::ValueConversionFailed(format!("column {index}: {source}"))
            }
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => {
                MysqlError::QueryFailed(format!("the connection to MySQL at {} failed: {err}", redact(address)))
            }
            other => MysqlError::QueryFailed(other.to_string()),
        }
    }

    pub fn message(&self) -> String {
        match self {
            MysqlError::ConnectionFailed(m)
            | MysqlError::BadParameter(m)
            | MysqlError::QueryFailed(m)
            | MysqlError::ValueConversionFailed(m)
            | MysqlError::Other(m) => m.clone(),
        }
    }
}

/// A query's result read in full.
#[derive(Debug, Clone, Default)]
pub struct MysqlRowSet {
    pub columns: Vec<rdbms::Column>,
    pub rows: Vec<Vec<DbValue>>,
}

/// The rows of a query as they arrive ([`MysqlConnection::query_rows`]), and how it ended: a
/// query that fails part-way has sent the rows before the failure.
pub struct MysqlRows<R> {
    pub columns: Vec<rdbms::Column>,
    pub rows: tokio::sync::mpsc::Receiver<R>,
    pub end: tokio::sync::oneshot::Receiver<Result<(), MysqlError>>,
}

/// Where a MySQL address points, for the allowed-hosts check: host and port (3306 unless
/// given).
pub fn endpoint(address: &str) -> Result<(String, u16), MysqlError> {
    let options = crate::backends::mysql_options(address).map_err(MysqlError::ConnectionFailed)?;
    Ok((options.get_host().to_string(), options.get_port()))
}

/// The pools, one per address, opened on first use and shared by every instance.
pub struct MysqlPools {
    pools: Mutex<BTreeMap<String, MySqlPool>>,
    metrics: Arc<crate::observe::Metrics>,
}

impl MysqlPools {
    pub fn new(metrics: Arc<crate::observe::Metrics>) -> MysqlPools {
        MysqlPools {
            pools: Mutex::default(),
            metrics,
        }
    }

    /// Checks every server a pool was opened for (for `/readyz`): each must hand out a
    /// connection that answers now. Returns (address without password, outcome).
    pub async fn check_servers(&self) -> Vec<(String, Result<(), MysqlError>)> {
        let addresses: Vec<String> = self.pools.lock().await.keys().cloned().collect();
        let mut outcomes = Vec::new();
        for address in addresses {
            let outcome = match self.connect(&address).await {
                Ok(connection) => connection.execute("SELECT 1", &[]).await.map_err(|err| {
                    self.metrics.record_backend_error("mysql", "mysql");
                    MysqlError::ConnectionFailed(format!("MySQL at {} failed: {}", redact(&address), err.message()))
                }),
                Err(err) => Err(err),
            };
            outcomes.push((redact(&address), outcome));
        }
        outcomes
    }

    async fn pool(&self, address: &str) -> Result<MySqlPool, MysqlError> {
        let mut pools = self.pools.lock().await;
        if let Some(pool) = pools.get(address) {
            return Ok(pool.clone());
        }
        let pool = crate::backends::mysql_pool(address, POOL_SIZE).map_err(MysqlError::ConnectionFailed)?;
        pools.insert(address.to_string(), pool.clone());
        Ok(pool)
    }

    /// A connection of the pool of `address`, the caller's until dropped.
    pub async fn connect(&self, address: &str) -> Result<MysqlConnection, MysqlError> {
        let pool = self.pool(address).await?;
        let connection = pool.acquire().await.map_err(|err| {
            self.metrics.record_backend_error("mysql", "mysql");
            let why = match err {
                sqlx::Error::PoolTimedOut => {
                    format!("no connection within {:?}", crate::backends::MYSQL_CONNECT_TIMEOUT)
                }
                other => other.to_string(),
            };
            MysqlError::ConnectionFailed(format!("cannot connect to MySQL at {}: {why}", redact(address)))
        })?;
        Ok(MysqlConnection {
            connection: Arc::new(Mutex::new(connection)),
            address: Arc::from(redact(address)),
            spans: None,
        })
    }
}

/// An open connection in a guest's resource table. A clone shares the one pooled connection
/// (a Spin 4 call takes one out of the table for its await; a streaming query's task holds
/// one until its rows are read); it goes back to the pool when the last clone drops.
#[derive(Clone)]
pub struct MysqlConnection {
    connection: Arc<Mutex<PoolConnection<MySql>>>,
    /// The address without password, for messages.
    address: Arc<str>,
    /// The request span each statement is a span of, and the database's name, when spans are
    /// exported.
    spans: Option<(SpanParent, Arc<str>)>,
}

impl MysqlConnection {
    fn statement_span(&self, statement: &str) -> OpenSpan {
        match &self.spans {
            Some((parent, database)) => parent.statement("mysql", database, statement),
            None => OpenSpan::none(),
        }
    }

    fn fail(&self) -> impl Fn(sqlx::Error) -> MysqlError + '_ {
        |err| MysqlError::from_query(err, &self.address)
    }

    /// The columns of `statement` as the server describes them before running it (for a
    /// result without rows).
    async fn describe(
        connection: &mut PoolConnection<MySql>,
        statement: &str,
    ) -> Result<Vec<rdbms::Column>, sqlx::Error> {
        let prepared = connection.prepare(statement).await?;
        Ok(values::columns_of(sqlx::Statement::columns(&prepared)))
    }

    pub async fn query(&self, statement: &str, params: &[ParameterValue]) -> Result<MysqlRowSet, MysqlError> {
        let span = self.statement_span(statement);
        span.end_with(self.query_untraced(statement, params).await, MysqlError::message)
    }

    async fn query_untraced(&self, statement: &str, params: &[ParameterValue]) -> Result<MysqlRowSet, MysqlError> {
        let mut connection = self.connection.lock().await;
        let mut columns = None;
        let mut rows = Vec::new();
        {
            let mut stream = values::bind(statement, params).fetch(&mut **connection);
            while let Some(row) = stream.try_next().await.map_err(self.fail())? {
                let columns = columns.get_or_insert_with(|| values::columns_of(sqlx::Row::columns(&row)));
                rows.push(values::row_values(&row, columns)?);
            }
        }
        let columns = match columns {
            Some(columns) => columns,
            None => Self::describe(&mut connection, statement).await.map_err(self.fail())?,
        };
        Ok(MysqlRowSet { columns, rows })
    }

    /// Runs a query whose rows reach the caller as the server sends them: a task reads them,
    /// converts each with `convert` and sends it on, at most [`ROWS_AHEAD`] ahead of the
    /// reader; it stops when the reader goes. The columns come with the first row (or, for a
    /// result without rows, from the server's description of the statement); `end` says how
    /// the query ended.
    pub async fn query_rows<R: Send + 'static>(
        &self,
        statement: &str,
        params: &[ParameterValue],
        convert: impl Fn(Vec<DbValue>) -> R + Send + Sync + 'static,
    ) -> Result<MysqlRows<R>, MysqlError> {
        // The span covers the statement up to its first row (or its failure), as PostgreSQL's.
        let span = self.statement_span(statement);
        span.end_with(
            self.query_rows_untraced(statement, params, convert).await,
            MysqlError::message,
        )
    }

    async fn query_rows_untraced<R: Send + 'static>(
        &self,
        statement: &str,
        params: &[ParameterValue],
        convert: impl Fn(Vec<DbValue>) -> R + Send + Sync + 'static,
    ) -> Result<MysqlRows<R>, MysqlError> {
        let (sender, rows) = tokio::sync::mpsc::channel(ROWS_AHEAD);
        let (end_sender, end) = tokio::sync::oneshot::channel();
        let (columns_sender, columns) = tokio::sync::oneshot::channel::<Result<Vec<rdbms::Column>, MysqlError>>();
        let (this, statement, params) = (self.clone(), statement.to_string(), params.to_vec());
        tokio::spawn(async move {
            let mut connection = this.connection.lock().await;
            let mut columns_sender = Some(columns_sender);
            let mut columns = None;
            let outcome = async {
                {
                    let mut stream = values::bind(&statement, &params).fetch(&mut **connection);
                    while let Some(row) = stream.try_next().await.map_err(this.fail())? {
                        let columns = columns.get_or_insert_with(|| {
                            let columns = values::columns_of(sqlx::Row::columns(&row));
                            if let Some(sender) = columns_sender.take() {
                                let _ = sender.send(Ok(columns.clone()));
                            }
                            columns
                        });
                        let values = values::row_values(&row, columns)?;
                        if sender.send(convert(values)).await.is_err() {
                            // The reader went: nobody wants the rest.
                            return Ok(());
                        }
                    }
                }
                if let Some(sender) = columns_sender.take() {
                    let described = Self::describe(&mut connection, &statement).await.map_err(this.fail())?;
                    let _ = sender.send(Ok(described));
                }
                Ok(())
            }
            .await;
            match (columns_sender.take(), outcome) {
                // It failed before any row: the query itself fails.
                (Some(sender), Err(err)) => {
                    let _ = sender.send(Err(err));
                }
                (_, outcome) => {
                    let _ = end_sender.send(outcome);
                }
            }
        });
        let columns = columns
            .await
            .map_err(|_| MysqlError::Other("the query ended without a result".to_string()))??;
        Ok(MysqlRows { columns, rows, end })
    }

    pub async fn execute(&self, statement: &str, params: &[ParameterValue]) -> Result<(), MysqlError> {
        let span = self.statement_span(statement);
        let mut connection = self.connection.lock().await;
        let outcome = values::bind(statement, params)
            .execute(&mut **connection)
            .await
            .map(drop)
            .map_err(self.fail());
        span.end_with(outcome, MysqlError::message)
    }

    /// Applies the migrations not applied yet ([`crate::migrations::apply_pending`]); each runs
    /// in a transaction with its record, though MySQL commits at each DDL statement.
    pub async fn migrate(
        &self,
        migrations: &[crate::migrations::Migration],
    ) -> Result<Vec<String>, crate::migrations::MigrationError> {
        let mut connection = self.connection.lock().await;
        let mut store = MysqlMigrations {
            address: &self.address,
            connection: &mut connection,
        };
        crate::migrations::apply_pending(&mut store, migrations).await
    }
}

struct MysqlMigrations<'a> {
    address: &'a str,
    connection: &'a mut PoolConnection<MySql>,
}

impl crate::migrations::MigrationStore for MysqlMigrations<'_> {
    fn describe(&self) -> String {
        format!("the MySQL database {}", self.address)
    }

    async fn applied(&mut self) -> Result<Vec<crate::migrations::AppliedMigration>, String> {
        let fail = |err| MysqlError::from_query(err, self.address).message();
        self.connection
            .execute(sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS _mosaic_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
                 checksum TEXT NOT NULL, applied_at_unix_ms BIGINT NOT NULL)",
            ))
            .await
            .map_err(fail)?;
        let rows: Vec<(i64, String, String)> = sqlx::query_as("SELECT version, name, checksum FROM _mosaic_migrations")
            .fetch_all(&mut **self.connection)
            .await
            .map_err(fail)?;
        Ok(rows
            .into_iter()
            .map(|(version, name, checksum)| crate::migrations::AppliedMigration {
                version,
                name,
                checksum,
            })
            .collect())
    }

    async fn apply(&mut self, migration: &crate::migrations::Migration, applied_at_unix_ms: i64) -> Result<(), String> {
        let address = self.address;
        let fail = |err| MysqlError::from_query(err, address).message();
        let connection = &mut *self.connection;
        connection.execute(sqlx::raw_sql("BEGIN")).await.map_err(fail)?;
        let outcome = async {
            connection.execute(sqlx::raw_sql(&migration.sql)).await.map_err(fail)?;
            sqlx::query(
                "INSERT INTO _mosaic_migrations (version, name, checksum, applied_at_unix_ms) VALUES (?, ?, ?, ?)",
            )
            .bind(migration.version)
            .bind(&migration.name)
            .bind(&migration.checksum)
            .bind(applied_at_unix_ms)
            .execute(&mut **connection)
            .await
            .map_err(fail)?;
            connection.execute(sqlx::raw_sql("COMMIT")).await.map_err(fail)
        }
        .await;
        if outcome.is_err() {
            let _ = connection.execute(sqlx::raw_sql("ROLLBACK")).await;
        }
        outcome.map(drop)
    }
}

/// What one instance may reach: the shared pools, through its `allowed_outbound_hosts`.
#[derive(Clone)]
pub struct MysqlAccess {
    pub pools: Arc<MysqlPools>,
    pub allowed: Arc<mosaic_manifest::allowed_hosts::AllowedHosts>,
    /// The trace of the request the instance serves: each statement on a connection opened
    /// under it is a span of it (when spans are exported).
    pub trace: Option<Arc<crate::observe::TraceContext>>,
}

impl MysqlAccess {
    /// A connection to `address` if its host is in the component's `allowed_outbound_hosts`
    /// (`mysql://HOST:PORT`): every MySQL interface opens through here.
    pub async fn open(&self, address: &str) -> Result<MysqlConnection, MysqlError> {
        let (host, port) = endpoint(address)?;
        if !self.allowed.allows("mysql", &host, Some(port)) {
            let shown = redact(address);
            // Spin's error value (without the password); the log says what to change.
            tracing::warn!(
                address = %shown,
                "a MySQL connection was refused: add the address to the component's allowed_outbound_hosts"
            );
            return Err(MysqlError::ConnectionFailed(format!(
                "address {shown} is not permitted"
            )));
        }
        let mut connection = self.pools.connect(address).await?;
        if let Some(parent) = SpanParent::of(self.trace.as_ref(), self.pools.metrics.spans()) {
            connection.spans = Some((parent, Arc::from(database_of(address))));
        }
        Ok(connection)
    }
}

/// The database a `mysql://user:password@host:port/DATABASE?options` address names.
fn database_of(address: &str) -> &str {
    address
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path.split(['?', '/']).next().unwrap_or(""))
        .filter(|database| !database.is_empty())
        .unwrap_or("mysql")
}

#[async_trait::async_trait]
impl super::Capability for MysqlPools {
    async fn readiness(&self) -> Vec<super::Check> {
        super::server_checks("mysql", self.check_servers(), |err| err.message()).await
    }
}

super::guest_view!(
    /// The guest's view of MySQL: its instance's access and resource table.
    MysqlView,
    MysqlImports,
    MysqlAccess,
    mysql,
    mysql_view
);

impl super::GuestCapability for MysqlPools {
    type Instance = MysqlAccess;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> MysqlAccess {
        MysqlAccess {
            pools: self.clone(),
            allowed: component.allowed_hosts.clone(),
            trace: None,
        }
    }

    /// Links `fermyon:spin/mysql@2.0.0` (its `rdbms-types` come with PostgreSQL) and
    /// `spin:mysql/mysql@3.0.0`.
    fn add_to_linker<T: super::HasInstance<MysqlAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use crate::capability::bindings::{spin_mysql, spin_mysql3};
        spin_mysql::add_to_linker::<T, MysqlImports>(linker, mysql_view::<T>)?;
        spin_mysql3::add_to_linker::<T, MysqlImports>(linker, mysql_view::<T>)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_redaction() {
        assert_eq!(
            endpoint("mysql://u:secret@db.example:3307/app").unwrap(),
            ("db.example".to_string(), 3307)
        );
        assert_eq!(
            endpoint("mysql://root@127.0.0.1/test").unwrap(),
            ("127.0.0.1".to_string(), 3306)
        );
        assert_eq!(redact("mysql://u:secret@db/app"), "mysql://u@db/app");
        assert!(endpoint("postgres://db/app").is_err());
        assert!(endpoint("mysql://db/app?socket=/run/mysqld/mysqld.sock").is_err());
        let err = endpoint("mysql://u:secret@[bad/app").unwrap_err();
        assert!(!err.message().contains("secret"), "{err:?}");
    }
}
