//! The embedded backend: one SQLite file per store (WAL mode), through sqlx. Writes go through
//! one lock per store so that increment and compare-and-swap are atomic for this host; reads
//! run concurrently beside them.

use std::path::Path;

use sqlx::sqlite::SqlitePool;
use tokio::sync::Mutex;

use super::{parse_counter, KeyValueStore, KeysPage, KvError};

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

    async fn keys_page(&self, cursor: Option<&str>, limit: usize) -> Result<KeysPage, KvError> {
        let limit = limit.max(1);
        // One row past the page tells whether another page follows.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        // The primary key's index serves both as a range read from the cursor on.
        let query = match cursor {
            Some(after) => sqlx::query_scalar::<_, String>("SELECT key FROM kv WHERE key > ?1 ORDER BY key LIMIT ?2")
                .bind(after.to_string())
                .bind(fetch),
            None => sqlx::query_scalar::<_, String>("SELECT key FROM kv ORDER BY key LIMIT ?1").bind(fetch),
        };
        let mut keys = query
            .fetch_all(&self.pool)
            .await
            .map_err(|err| backend(&self.path, err))?;
        let more = keys.len() > limit;
        keys.truncate(limit);
        let cursor = if more { keys.last().cloned() } else { None };
        Ok(KeysPage { keys, cursor })
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::SqliteStore;
    use crate::capability::key_value::KeyValueStore;

    /// A fresh store file holding `key-00000000` .. `key-{count - 1}`.
    async fn store_with_keys(name: &str, count: i64) -> (SqliteStore, PathBuf) {
        let path = std::env::temp_dir().join(format!("mosaic-kv-page-{name}-{}.sqlite", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let store = SqliteStore::open(&path).await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1) \
             INSERT INTO kv (key, value) SELECT printf('key-%08d', i), x'00' FROM n WHERE i < ?1",
        )
        .bind(count)
        .execute(&store.pool)
        .await
        .unwrap();
        (store, path)
    }

    async fn fastest_first_page(store: &SqliteStore) -> Duration {
        let mut fastest = Duration::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            let page = store.keys_page(None, 100).await.unwrap();
            fastest = fastest.min(started.elapsed());
            assert_eq!(page.keys.len(), 100);
            assert!(page.cursor.is_some());
        }
        fastest
    }

    #[tokio::test]
    async fn a_page_costs_the_same_in_a_small_and_a_large_store() {
        let (small, small_path) = store_with_keys("small", 1_000).await;
        let (large, large_path) = store_with_keys("large", 100_000).await;
        let small_page = fastest_first_page(&small).await;
        let large_page = fastest_first_page(&large).await;
        // Reading the whole keyspace makes a page out of 100,000 keys about 100 times dearer
        // than one out of 1,000; reading just the page makes them cost the same.
        assert!(
            large_page < small_page * 5 + Duration::from_millis(5),
            "a page of 100 keys took {large_page:?} out of 100,000 keys but {small_page:?} out of 1,000"
        );
        for path in [small_path, large_path] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[tokio::test]
    async fn a_cursor_continues_where_its_page_stopped() {
        let (store, path) = store_with_keys("cursor", 2_500).await;
        let expected = |from: usize, to: usize| (from..to).map(|i| format!("key-{i:08}")).collect::<Vec<_>>();
        let first = store.keys_page(None, 1000).await.unwrap();
        assert_eq!(first.keys, expected(0, 1000));
        // Keys written before the cursor do not move it.
        store.set("a-first", b"x").await.unwrap();
        store.set("key-00000500a", b"x").await.unwrap();
        let second = store.keys_page(first.cursor.as_deref(), 1000).await.unwrap();
        assert_eq!(second.keys, expected(1000, 2000));
        let third = store.keys_page(second.cursor.as_deref(), 1000).await.unwrap();
        assert_eq!(third.keys, expected(2000, 2500));
        assert_eq!(third.cursor, None, "the last page says so");

        let (empty, empty_path) = store_with_keys("empty", 0).await;
        let page = empty.keys_page(None, 1000).await.unwrap();
        assert!(page.keys.is_empty() && page.cursor.is_none());
        for path in [path, empty_path] {
            let _ = std::fs::remove_file(path);
        }
    }
}
