//! The Redis backend: one Redis database per store (the `url` of its runtime config), through
//! a multiplexed connection that reconnects on its own. Counters use INCRBY and
//! compare-and-swap a Lua script, so both are atomic across every host sharing the server.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::{KeyValueStore, KeysPage, KvError};

pub struct RedisStore {
    connection: ConnectionManager,
    url: String,
}

const COMPARE_AND_SWAP: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"#;

impl RedisStore {
    pub async fn open(url: &str) -> Result<Self, KvError> {
        let connection = crate::backends::redis_connection(url)
            .await
            .map_err(|err| KvError::Backend(format!("redis store: {err}")))?;
        Ok(Self {
            connection,
            url: crate::backends::redact_url(url),
        })
    }

    fn fail(&self, err: redis::RedisError) -> KvError {
        KvError::Backend(format!("redis store {}: {err}", self.url))
    }
}

#[async_trait::async_trait]
impl KeyValueStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.connection.clone().get(key).await.map_err(|err| self.fail(err))
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.connection
            .clone()
            .set(key, value)
            .await
            .map_err(|err| self.fail(err))
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.connection.clone().del(key).await.map_err(|err| self.fail(err))
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.connection.clone().exists(key).await.map_err(|err| self.fail(err))
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut connection = self.connection.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(|err| self.fail(err))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn keys_page(&self, cursor: Option<&str>, limit: usize) -> Result<KeysPage, KvError> {
        // The cursor handed to the guest is SCAN's own, so a page costs a round or two
        // whatever the size of the database.
        let mut scan: u64 = match cursor {
            None => 0,
            Some(text) => text.parse().map_err(|_| {
                KvError::Invalid(format!(
                    "`{text}` is not a list-keys cursor of this store: pass the cursor the previous page returned, or none to start over"
                ))
            })?,
        };
        let mut connection = self.connection.clone();
        let mut keys: Vec<String> = Vec::new();
        // COUNT bounds the work of one round, not its answer: a round may return no key
        // while more follow, so go on until the page has keys or the scan has ended.
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(scan)
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut connection)
                .await
                .map_err(|err| self.fail(err))?;
            keys.extend(batch);
            scan = next;
            if scan == 0 || !keys.is_empty() {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        let cursor = (scan != 0).then(|| scan.to_string());
        Ok(KeysPage { keys, cursor })
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.connection
            .clone()
            .incr(key, delta)
            .await
            .map_err(|err| match err.kind() {
                redis::ErrorKind::Server(_) => KvError::Invalid(format!(
                    "the value at `{key}` is not an integer, so it cannot be incremented"
                )),
                _ => self.fail(err),
            })
    }

    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, KvError> {
        let mut connection = self.connection.clone();
        let swapped: i64 = redis::Script::new(COMPARE_AND_SWAP)
            .key(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new)
            .invoke_async(&mut connection)
            .await
            .map_err(|err| self.fail(err))?;
        Ok(swapped == 1)
    }
}
