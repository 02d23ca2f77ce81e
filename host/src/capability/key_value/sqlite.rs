//! The embedded backend: one SQLite file per store (WAL mode), through sqlx. Writes go through
//! one lock per store so that increment and compare-and-swap are atomic for this host; reads
//! run concurrently beside them.

use std::path::Path;

use sqlx::sqlite::SqlitePool;
use tokio::sync::Mutex;

use super::{parse_counter, KeyValueStore, KvError};

pub struct SqliteStore {
    pool: SqlitePool,
    writes: Mutex<()>,
    path: String,
}

fn backend(path: &str, err: sqlx::Error) -> KvError {
    KvError::Backend(format!("embedded store {path}: {err}"))
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self, KvError> {
        let shown = path.display().to_string();
        let pool = crate::backends::sqlite_pool(path)
            .await
            .map_err(|err| KvError::Backend(format!("embedded store: {err}")))?;
        sqlx::query("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID")
            .execute(&pool)
            .await
            .map_err(|err| backend(&shown, err))?;
        Ok(Self {
            pool,
            writes: Mutex::new(()),
            path: shown,
        })
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        sqlx::query(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(|err| backend(&self.path, err))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl KeyValueStore for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        sqlx::query_scalar::<_, Vec<u8>>("SELECT value FROM kv WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| backend(&self.path, err))
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        let _write = self.writes.lock().await;
        self.put(key, value).await
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        let _write = self.writes.lock().await;
        sqlx::query("DELETE FROM kv WHERE key = ?1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|err| backend(&self.path, err))?;
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.get(key).await?.is_some())
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        sqlx::query_scalar::<_, String>("SELECT key FROM kv ORDER BY key")
            .fetch_all(&self.pool)
            .await
            .map_err(|err| backend(&self.path, err))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let _write = self.writes.lock().await;
        let current = parse_counter(key, self.get(key).await?.as_deref())?;
        let next = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Invalid(format!("incrementing `{key}` by {delta} overflows a 64-bit integer")))?;
        self.put(key, next.to_string().as_bytes()).await?;
        Ok(next)
    }

    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, KvError> {
        let _write = self.writes.lock().await;
        if self.get(key).await?.as_deref() != expected {
            return Ok(false);
        }
        self.put(key, new).await?;
        Ok(true)
    }
}
