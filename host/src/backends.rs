//! Openers for the services more than one part of the host stands on: an embedded SQLite file
//! (key-value's embedded store, the SQLite databases), a Redis server (key-value's Redis
//! store, the Redis client), a PostgreSQL server (the guests' pools, the cluster store) and a
//! MySQL server (the guests' pools).
//! The capabilities stay apart; the connection settings live here once.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// How long a Redis connect or command may take before the guest gets an error.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a PostgreSQL connect (or the wait for a pooled connection) may take.
pub const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of up to `max_size` connections to the PostgreSQL server at `address` (a URL or
/// `key=value` pairs), opened lazily. A connection goes back to the pool with `ROLLBACK`, so a
/// transaction its user left open never reaches the next user.
pub fn postgres_pool(address: &str, max_size: usize) -> Result<deadpool_postgres::Pool, String> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let mut config = tokio_postgres::Config::from_str(address)
        .map_err(|err| format!("`{}` is not a PostgreSQL address: {err}", redact_postgres(address)))?;
    config.connect_timeout(POSTGRES_CONNECT_TIMEOUT);
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Custom("ROLLBACK".into()),
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(POSTGRES_CONNECT_TIMEOUT))
        .create_timeout(Some(POSTGRES_CONNECT_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|err| err.to_string())
}

/// A PostgreSQL address without its password, for messages.
pub fn redact_postgres(address: &str) -> String {
    if let (Some(scheme), Some(at)) = (address.find("://"), address.rfind('@')) {
        if at > scheme {
            let credentials = &address[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            return format!("{}{user}@{}", &address[..scheme + 3], &address[at + 1..]);
        }
    }
    address
        .split_whitespace()
        .map(|pair| {
            if pair.starts_with("password=") {
                "password=***"
            } else {
                pair
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long a MySQL connect (or the wait for a pooled connection) may take.
pub const MYSQL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connect options of a MySQL address (`mysql://user:password@host:port/db`), with the
/// server's own session defaults (sqlx would set `sql_mode` and `time_zone`; Spin does not)
/// and without TLS unless the address asks for it (`ssl-mode=...`), as in Spin. A `socket=`
/// parameter is refused: it would reach a local socket past the host the grant names.
pub fn mysql_options(address: &str) -> Result<sqlx::mysql::MySqlConnectOptions, String> {
    let shown = redact_mysql(address);
    if !address.starts_with("mysql://") {
        return Err(format!(
            "`{shown}` is not a MySQL address: expected mysql://USER:PASSWORD@HOST:PORT/DATABASE"
        ));
    }
    let query = address.split_once('?').map(|(_, query)| query).unwrap_or("");
    let given = |names: &[&str]| {
        query.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("").to_ascii_lowercase();
            names.contains(&key.as_str())
        })
    };
    if given(&["socket"]) {
        return Err(format!("`{shown}`: a MySQL address may not name a socket"));
    }
    let mut options = sqlx::mysql::MySqlConnectOptions::from_str(address)
        .map_err(|err| format!("`{shown}` is not a MySQL address: {}", redact_mysql(&err.to_string())))?
        .pipes_as_concat(false)
        .no_engine_substitution(false);
    if !given(&["timezone", "time-zone"]) {
        options = options.timezone(None);
    }
    if !given(&["sslmode", "ssl-mode"]) {
        options = options.ssl_mode(sqlx::mysql::MySqlSslMode::Disabled);
    }
    Ok(options)
}

/// A pool of up to `max_size` connections to the MySQL server at `address`, opened lazily:
/// a connection is checked before it is handed out (a broken one is replaced) and goes back
/// with `ROLLBACK`, so a transaction its user left open never reaches the next user.
pub fn mysql_pool(address: &str, max_size: u32) -> Result<sqlx::MySqlPool, String> {
    let options = mysql_options(address)?;
    Ok(sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max_size)
        .min_connections(0)
        .acquire_timeout(MYSQL_CONNECT_TIMEOUT)
        .test_before_acquire(true)
        .after_release(|connection, _| {
            Box::pin(async move {
                // A connection that cannot roll back is closed rather than reused.
                Ok(sqlx::Executor::execute(&mut *connection, sqlx::raw_sql("ROLLBACK"))
                    .await
                    .is_ok())
            })
        })
        .connect_lazy_with(options))
}

/// A MySQL address without its password, for messages.
pub fn redact_mysql(address: &str) -> String {
    redact_postgres(address)
}

/// A pool on the SQLite file at `path` (created with its directory if missing): WAL mode,
/// foreign keys on, 5 s busy timeout, up to 16 connections (a guest's SQLite handle holds one
/// for its lifetime), 10 s to get one. A commit survives the process being
/// killed; `sqlite_pool_durable` also survives the machine losing power.
pub async fn sqlite_pool(path: &Path) -> Result<SqlitePool, String> {
    open_sqlite_pool(path, SqliteSynchronous::Normal).await
}

/// Like [`sqlite_pool`], but every commit is on disk (fsync) before it returns: for the
/// message broker's log, where a publish is acknowledged as durable.
pub async fn sqlite_pool_durable(path: &Path) -> Result<SqlitePool, String> {
    open_sqlite_pool(path, SqliteSynchronous::Full).await
}

async fn open_sqlite_pool(path: &Path, synchronous: SqliteSynchronous) -> Result<SqlitePool, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(|err| err.to_string())?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|err| format!("cannot open {}: {err}", path.display()))
}

/// A self-reconnecting, multiplexed connection to the Redis server at `url`. Errors name the
/// server without its password.
pub async fn redis_connection(url: &str) -> Result<ConnectionManager, String> {
    let shown = redact_url(url);
    let client = redis::Client::open(url).map_err(|err| format!("`{shown}` is not a Redis address: {err}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(1);
    tokio::time::timeout(REDIS_TIMEOUT, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| format!("Redis at {shown} did not answer within {REDIS_TIMEOUT:?}"))?
        .map_err(|err| format!("Redis at {shown} is unreachable: {err}"))
}

/// `scheme://user:password@host...` without the credentials.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Values (connections, stores) opened on first use, one per key, shared by every caller.
/// The opening runs outside any lock: callers of the same key await one shared attempt,
/// callers of other keys never wait for it (a dead server stalls only those who asked for
/// it), and a failed attempt is forgotten so that the next caller tries again.
pub struct OpenedByKey<T, E> {
    entries: std::sync::Mutex<HashMap<String, Attempt<T, E>>>,
    attempts: AtomicU64,
}

struct Attempt<T, E> {
    /// Tells this attempt from a later one under the same key, so that a caller finishing a
    /// failed attempt never forgets a newer one.
    id: u64,
    opening: Shared<BoxFuture<'static, Result<T, E>>>,
}

impl<T, E> Default for OpenedByKey<T, E> {
    fn default() -> Self {
        Self {
            entries: std::sync::Mutex::new(HashMap::new()),
            attempts: AtomicU64::new(0),
        }
    }
}

impl<T, E> OpenedByKey<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// The value under `key`, opened with `open` if no attempt has succeeded or is under way.
    pub async fn get_or_open<F, Fut>(&self, key: &str, open: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (id, opening) = {
            let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match entries.get(key) {
                Some(attempt) => (attempt.id, attempt.opening.clone()),
                None => {
                    let id = self.attempts.fetch_add(1, Ordering::Relaxed);
                    let opening = open().boxed().shared();
                    entries.insert(
                        key.to_string(),
                        Attempt {
                            id,
                            opening: opening.clone(),
                        },
                    );
                    (id, opening)
                }
            }
        };
        let outcome = opening.await;
        if outcome.is_err() {
            let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if entries.get(key).is_some_and(|attempt| attempt.id == id) {
                entries.remove(key);
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            super::redact_url("redis://user:secret@host:6379/0"),
            "redis://host:6379/0"
        );
        assert_eq!(super::redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
