//! PostgreSQL: `fermyon:spin/postgres@2.0.0`, `spin:postgres/postgres@3.0.0`, `@4.0.0` and
//! Spin 4's `@4.2.0` (async functions, rows as a stream, a connection builder) on a
//! real server through pools (tokio-postgres + deadpool). A guest opens an address (a URL
//! `postgres://user@host:port/db` or `host=... user=... dbname=...`) checked against its
//! `allowed_outbound_hosts` (`postgres://HOST:PORT`), as in Spin; the connection is the
//! guest's alone until it drops it, so transactions work. Parameters are always bound.

mod guest;
mod spin4;
pub mod values;

use std::collections::BTreeMap;
use std::str::FromStr;

use deadpool_postgres::{Object, Pool};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::observe::{OpenSpan, SpanParent};

pub use values::{PgType, PgValue};

/// Connections per address, shared by every instance.
const POOL_SIZE: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum PgError {
    ConnectionFailed(String),
    BadParameter(String),
    QueryFailed { text: String, db: Option<DbErrorInfo> },
    ValueConversionFailed(String),
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DbErrorInfo {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

impl PgError {
    fn from_query(err: tokio_postgres::Error) -> Self {
        let db = err.as_db_error().map(|db| DbErrorInfo {
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
        });
        let text = match &db {
            Some(db) => format!("{}: {} ({})", db.severity, db.message, db.code),
            None => err.to_string(),
        };
        if db.is_none() && err.to_string().contains("serializing parameter") {
            return PgError::BadParameter(format!("{err}: {}", source_chain(&err)));
        }
        PgError::QueryFailed { text, db }
    }

    pub fn message(&self) -> String {
        match self {
            PgError::ConnectionFailed(m)
            | PgError::BadParameter(m)
            | PgError::ValueConversionFailed(m)
            | PgError::Other(m) => m.clone(),
            PgError::QueryFailed { text, .. } => text.clone(),
        }
    }
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = err.source();
    while let Some(inner) = source {
        parts.push(inner.to_string());
        source = inner.source();
    }
    parts.join(": ")
}

/// Rows a query may read ahead of a guest that reads them as a stream.
pub const ROWS_AHEAD: usize = 64;

/// The rows of a query as they arrive ([`PgConnection::query_rows`]), and how it ended: a
/// query that fails part-way has sent the rows before the failure.
pub struct PgRows<R> {
    pub columns: Vec<(String, PgType)>,
    pub rows: tokio::sync::mpsc::Receiver<R>,
    pub end: tokio::sync::oneshot::Receiver<Result<(), PgError>>,
}

fn columns_of(prepared: &tokio_postgres::Statement) -> Vec<(String, PgType)> {
    prepared
        .columns()
        .iter()
        .map(|column| (column.name().to_string(), values::type_of(column.type_())))
        .collect()
}

fn row_values(row: &tokio_postgres::Row) -> Result<Vec<PgValue>, PgError> {
    let mut values = Vec::with_capacity(row.len());
    for index in 0..row.len() {
        values.push(
            values::value_at(row, index).map_err(|err| {
                PgError::ValueConversionFailed(format!("column {index}: {err}: {}", source_chain(&err)))
            })?,
        );
    }
    Ok(values)
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgRowSet {
    pub columns: Vec<(String, PgType)>,
    pub rows: Vec<Vec<PgValue>>,
}

/// Where an address points, for the allowed-hosts check.
pub fn endpoints(address: &str) -> Result<Vec<(String, u16)>, PgError> {
    let config = tokio_postgres::Config::from_str(address).map_err(|err| {
        PgError::ConnectionFailed(format!("`{}` is not a PostgreSQL address: {err}", redact(address)))
    })?;
    let ports = config.get_ports();
    let mut out = Vec::new();
    for (index, host) in config.get_hosts().iter().enumerate() {
        let name = match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        };
        let port = ports.get(index).or(ports.first()).copied().unwrap_or(5432);
        out.push((name, port));
    }
    if out.is_empty() {
        out.push(("localhost".to_string(), ports.first().copied().unwrap_or(5432)));
    }
    Ok(out)
}

use crate::backends::redact_postgres as redact;

/// A `connection-builder` of `spin:postgres/postgres@4.2.0` in a guest's resource table: the
/// address it will open (`build` runs the same checks as `open`).
pub struct PgConnectionBuilder {
    pub address: String,
}

pub struct PgPools {
    pools: Mutex<BTreeMap<String, Pool>>,
    metrics: std::sync::Arc<crate::observe::Metrics>,
}

impl PgPools {
    pub fn new(metrics: std::sync::Arc<crate::observe::Metrics>) -> PgPools {
        PgPools {
            pools: Mutex::default(),
            metrics,
        }
    }

    /// Checks every server a pool was opened for (for `/readyz`): each must hand out a
    /// connection now. Returns (address without password, outcome).
    pub async fn check_servers(&self) -> Vec<(String, Result<(), PgError>)> {
        let addresses: Vec<String> = self.pools.lock().await.keys().cloned().collect();
        let mut outcomes = Vec::new();
        for address in addresses {
            let outcome = match self.connect(&address).await {
                Ok(connection) => connection
                    .client
                    .simple_query("SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|err| {
                        self.metrics.record_backend_error("postgres", "postgres");
                        PgError::ConnectionFailed(format!("PostgreSQL at {} failed: {err}", redact(&address)))
                    }),
                Err(err) => Err(err),
            };
            outcomes.push((redact(&address), outcome));
        }
        outcomes
    }

    async fn pool(&self, address: &str) -> Result<Pool, PgError> {
        let mut pools = self.pools.lock().await;
        if let Some(pool) = pools.get(address) {
            return Ok(pool.clone());
        }
        let pool = crate::backends::postgres_pool(address, POOL_SIZE).map_err(PgError::ConnectionFailed)?;
        pools.insert(address.to_string(), pool.clone());
        Ok(pool)
    }

    /// A connection of the pool of `address`, the caller's until dropped.
    pub async fn connect(&self, address: &str) -> Result<PgConnection, PgError> {
        let pool = self.pool(address).await?;
        let client = pool.get().await.map_err(|err| {
            self.metrics.record_backend_error("postgres", "postgres");
            PgError::ConnectionFailed(format!("cannot connect to PostgreSQL at {}: {err}", redact(address)))
        })?;
        Ok(PgConnection {
            client: Arc::new(client),
            spans: None,
        })
    }
}

/// An open connection in a guest's resource table. A clone shares the one pooled connection
/// (a Spin 4 call takes one out of the table for its await); it goes back to the pool when the
/// last clone drops.
#[derive(Clone)]
pub struct PgConnection {
    client: Arc<Object>,
    /// The request span each statement is a span of, and the database's name, when spans are
    /// exported.
    spans: Option<(SpanParent, Arc<str>)>,
}

impl PgConnection {
    fn statement_span(&self, statement: &str) -> OpenSpan {
        match &self.spans {
            Some((parent, database)) => parent.statement("postgresql", database, statement),
            None => OpenSpan::none(),
        }
    }

    /// Ends `span` with the statement's outcome.
    fn traced<T>(span: OpenSpan, outcome: Result<T, PgError>) -> Result<T, PgError> {
        span.end_with(outcome, PgError::message)
    }

    fn bind(params: &[PgValue]) -> Result<Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>, PgError> {
        params
            .iter()
            .enumerate()
            .map(|(index, value)| {
                values::to_parameter(value)
                    .map_err(|why| PgError::BadParameter(format!("parameter ${}: {why}", index + 1)))
            })
            .collect()
    }

    pub async fn query(&self, statement: &str, params: &[PgValue]) -> Result<PgRowSet, PgError> {
        let span = self.statement_span(statement);
        Self::traced(span, self.query_untraced(statement, params).await)
    }

    async fn query_untraced(&self, statement: &str, params: &[PgValue]) -> Result<PgRowSet, PgError> {
        let bound = Self::bind(params)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = bound.iter().map(|b| b.as_ref() as _).collect();
        let prepared = self.client.prepare(statement).await.map_err(PgError::from_query)?;
        let rows = self.client.query(&prepared, &refs).await.map_err(PgError::from_query)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(row_values(row)?);
        }
        Ok(PgRowSet {
            columns: columns_of(&prepared),
            rows: out,
        })
    }

    /// Runs a query whose rows reach the caller as the server sends them: a task reads them,
    /// converts each with `convert` and sends it on, at most [`ROWS_AHEAD`] ahead of the
    /// reader; it stops when the reader goes. `end` says how the query ended. The task holds
    /// the connection (a clone), so it stays out of the pool until the rows are read.
    pub async fn query_rows<R: Send + 'static>(
        &self,
        statement: &str,
        params: &[PgValue],
        convert: impl Fn(Vec<PgValue>) -> R + Send + 'static,
    ) -> Result<PgRows<R>, PgError> {
        let span = self.statement_span(statement);
        Self::traced(span, self.query_rows_untraced(statement, params, convert).await)
    }

    async fn query_rows_untraced<R: Send + 'static>(
        &self,
        statement: &str,
        params: &[PgValue],
        convert: impl Fn(Vec<PgValue>) -> R + Send + 'static,
    ) -> Result<PgRows<R>, PgError> {
        let bound = Self::bind(params)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = bound.iter().map(|b| b.as_ref() as _).collect();
        let prepared = self.client.prepare(statement).await.map_err(PgError::from_query)?;
        let stream = self
            .client
            .query_raw(&prepared, refs)
            .await
            .map_err(PgError::from_query)?;
        let (sender, rows) = tokio::sync::mpsc::channel(ROWS_AHEAD);
        let (end_sender, end) = tokio::sync::oneshot::channel();
        let connection = self.clone();
        tokio::spawn(async move {
            let _connection = connection;
            let mut stream = std::pin::pin!(stream);
            let outcome = loop {
                let row = match futures_util::TryStreamExt::try_next(&mut stream).await {
                    Ok(Some(row)) => row,
                    Ok(None) => break Ok(()),
                    Err(err) => break Err(PgError::from_query(err)),
                };
                match row_values(&row) {
                    Ok(values) => {
                        if sender.send(convert(values)).await.is_err() {
                            // The reader went: nobody wants the rest.
                            break Ok(());
                        }
                    }
                    Err(err) => break Err(err),
                }
            };
            let _ = end_sender.send(outcome);
        });
        Ok(PgRows {
            columns: columns_of(&prepared),
            rows,
            end,
        })
    }

    /// Applies the migrations not applied yet ([`crate::migrations::apply_pending`]), each in a
    /// transaction with its record.
    pub async fn migrate(
        &self,
        migrations: &[crate::migrations::Migration],
    ) -> Result<Vec<String>, crate::migrations::MigrationError> {
        crate::migrations::apply_pending(&mut PgMigrations(&self.client), migrations).await
    }

    pub async fn execute(&self, statement: &str, params: &[PgValue]) -> Result<u64, PgError> {
        let span = self.statement_span(statement);
        let run = async {
            let bound = Self::bind(params)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = bound.iter().map(|b| b.as_ref() as _).collect();
            self.client.execute(statement, &refs).await.map_err(PgError::from_query)
        };
        Self::traced(span, run.await)
    }
}

struct PgMigrations<'a>(&'a Object);

impl crate::migrations::MigrationStore for PgMigrations<'_> {
    fn describe(&self) -> String {
        "the PostgreSQL database".to_string()
    }

    async fn applied(&mut self) -> Result<Vec<crate::migrations::AppliedMigration>, String> {
        let fail = |err| PgError::from_query(err).message();
        self.0
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS _mosaic_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
                 checksum TEXT NOT NULL, applied_at_unix_ms BIGINT NOT NULL)",
            )
            .await
            .map_err(fail)?;
        let rows = self
            .0
            .query("SELECT version, name, checksum FROM _mosaic_migrations", &[])
            .await
            .map_err(fail)?;
        Ok(rows
            .iter()
            .map(|row| crate::migrations::AppliedMigration {
                version: row.get(0),
                name: row.get(1),
                checksum: row.get(2),
            })
            .collect())
    }

    async fn apply(&mut self, migration: &crate::migrations::Migration, applied_at_unix_ms: i64) -> Result<(), String> {
        let fail = |err| PgError::from_query(err).message();
        self.0.batch_execute("BEGIN").await.map_err(fail)?;
        let outcome = async {
            self.0.batch_execute(&migration.sql).await.map_err(fail)?;
            self.0
                .execute(
                    "INSERT INTO _mosaic_migrations (version, name, checksum, applied_at_unix_ms) VALUES ($1, $2, $3, $4)",
                    &[&migration.version, &migration.name, &migration.checksum, &applied_at_unix_ms],
                )
                .await
                .map_err(fail)?;
            self.0.batch_execute("COMMIT").await.map_err(fail)
        }
        .await;
        if outcome.is_err() {
            let _ = self.0.batch_execute("ROLLBACK").await;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_redaction() {
        assert_eq!(
            endpoints("postgres://u:secret@db.example:6543/app").unwrap(),
            vec![("db.example".to_string(), 6543)]
        );
        assert_eq!(
            endpoints("host=127.0.0.1 user=postgres dbname=test").unwrap(),
            vec![("127.0.0.1".to_string(), 5432)]
        );
        assert_eq!(redact("postgres://u:secret@db/app"), "postgres://u@db/app");
        assert_eq!(redact("host=h password=secret user=u"), "host=h password=*** user=u");
        assert!(endpoints("postgres://[bad").is_err());
    }
}

/// What one instance may reach: the shared pools, through its `allowed_outbound_hosts`.
#[derive(Clone)]
pub struct PostgresAccess {
    pub pools: Arc<PgPools>,
    pub allowed: Arc<mosaic_manifest::allowed_hosts::AllowedHosts>,
    /// The trace of the request the instance serves: each statement on a connection opened
    /// under it is a span of it (when spans are exported).
    pub trace: Option<Arc<crate::observe::TraceContext>>,
}

impl PostgresAccess {
    /// A connection to `address` if every host it names is in the component's
    /// `allowed_outbound_hosts` (`postgres://HOST:PORT`): every PostgreSQL interface opens
    /// through here.
    pub async fn open(&self, address: &str) -> Result<PgConnection, PgError> {
        for (host, port) in endpoints(address)? {
            if !self.allowed.allows("postgres", &host, Some(port)) {
                // Spin's error value; the log says what to change.
                tracing::warn!(
                    address = %format!("postgres://{host}:{port}"),
                    "a PostgreSQL connection was refused: add the address to the component's allowed_outbound_hosts"
                );
                return Err(PgError::ConnectionFailed(format!(
                    "address postgres://{host}:{port} is not permitted"
                )));
            }
        }
        let mut connection = self.pools.connect(address).await?;
        if let Some(parent) = SpanParent::of(self.trace.as_ref(), self.pools.metrics.spans()) {
            let database = address
                .parse::<tokio_postgres::Config>()
                .ok()
                .and_then(|config| config.get_dbname().map(str::to_string))
                .unwrap_or_else(|| "postgres".to_string());
            connection.spans = Some((parent, Arc::from(database)));
        }
        Ok(connection)
    }
}

#[async_trait::async_trait]
impl super::Capability for PgPools {
    async fn readiness(&self) -> Vec<super::Check> {
        super::server_checks("postgres", self.check_servers(), |err| err.message()).await
    }
}

super::guest_view!(
    /// The guest's view of PostgreSQL: its instance's access and resource table.
    PostgresView,
    PostgresImports,
    PostgresAccess,
    postgres,
    postgres_view
);

impl super::GuestCapability for PgPools {
    type Instance = PostgresAccess;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> PostgresAccess {
        PostgresAccess {
            pools: self.clone(),
            allowed: component.allowed_hosts.clone(),
            trace: None,
        }
    }

    fn add_to_linker<T: super::HasInstance<PostgresAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use crate::capability::bindings::{
            spin_postgres, spin_postgres3, spin_postgres4, spin_postgres4_2, spin_rdbms_types,
        };
        // fermyon:spin/postgres@2.0.0 (with rdbms-types) and spin:postgres/postgres 3, 4 and 4.2
        spin_rdbms_types::add_to_linker::<T, PostgresImports>(linker, postgres_view::<T>)?;
        spin_postgres::add_to_linker::<T, PostgresImports>(linker, postgres_view::<T>)?;
        spin_postgres3::add_to_linker::<T, PostgresImports>(linker, postgres_view::<T>)?;
        spin_postgres4::add_to_linker::<T, PostgresImports>(linker, postgres_view::<T>)?;
        spin_postgres4_2::add_to_linker::<T, PostgresImports>(linker, postgres_view::<T>)?;
        Ok(())
    }
}
