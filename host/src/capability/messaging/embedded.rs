//! The embedded broker, Mosaic's default: a durable log in one SQLite file of the state
//! directory (WAL, fsync on commit), no external service. A publish writes one row per
//! matching subscription; an ack deletes the row; a dead letter moves it to `dead_letters`.
//! Writes go through one writer task that commits whatever is waiting in a single transaction
//! (group commit), so many concurrent publishes share one fsync.
//!
//! One host owns the file (the state directory is refused to a second host), so "in flight"
//! needs no lease: a restart re-reads every row that was not acked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{
    now_unix_ms, Broker, BrokerError, Consumer, DeadLetter, Delivery, NewDeadLetter, Settle, SubscriptionSpec,
};

/// Most operations one transaction commits together.
const MAX_BATCH: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    published_at_ms INTEGER NOT NULL,
    traceparent TEXT
);
CREATE INDEX IF NOT EXISTS queue_by_subscriber ON queue (subscriber, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    published_at_ms INTEGER NOT NULL,
    dead_at_ms INTEGER NOT NULL
);
";

enum WriteOp {
    Publish {
        subscribers: Vec<String>,
        topic: String,
        payload: Vec<u8>,
        traceparent: Option<String>,
    },
    Ack {
        id: i64,
    },
    Attempt {
        id: i64,
        attempts: u32,
    },
    DeadLetter {
        id: i64,
        subscriber: String,
        letter: NewDeadLetter,
    },
}

struct Inner {
    pool: SqlitePool,
    /// Shown in errors.
    path: String,
    writer: mpsc::Sender<(WriteOp, oneshot::Sender<Result<(), BrokerError>>)>,
    subscriptions: RwLock<BTreeMap<String, SubscriptionSpec>>,
    wakeups: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Inner {
    fn wakeup(&self, subscriber: &str) -> Arc<Notify> {
        let mut wakeups = self.wakeups.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        wakeups.entry(subscriber.to_string()).or_default().clone()
    }

    async fn write(&self, op: WriteOp) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        let gone = || BrokerError::Unavailable(format!("the embedded broker ({}) has stopped", self.path));
        self.writer.send((op, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    fn failed(&self, err: sqlx::Error) -> BrokerError {
        BrokerError::Unavailable(format!("the embedded broker's log {} failed: {err}", self.path))
    }
}

/// The embedded broker (see the module documentation).
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

impl EmbeddedBroker {
    /// Opens (or creates) the log at `path`.
    pub async fn open(path: &Path) -> Result<EmbeddedBroker, BrokerError> {
        let pool = crate::backends::sqlite_pool_durable(path)
            .await
            .map_err(|err| BrokerError::Unavailable(format!("the embedded broker: {err}")))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(|err| {
            BrokerError::Unavailable(format!(
                "the embedded broker cannot set up its log {}: {err}",
                path.display()
            ))
        })?;
        add_traceparent_column(&pool).await.map_err(|err| {
            BrokerError::Unavailable(format!(
                "the embedded broker cannot upgrade its log {}: {err}",
                path.display()
            ))
        })?;
        let (writer, ops) = mpsc::channel(4 * MAX_BATCH);
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            path: path.display().to_string(),
            writer,
            subscriptions: RwLock::new(BTreeMap::new()),
            wakeups: Mutex::new(HashMap::new()),
        });
        tokio::spawn(run_writer(Arc::downgrade(&inner), pool, ops));
        Ok(EmbeddedBroker { inner })
    }
}

/// Logs written before messages carried their trace have no `traceparent` column.
async fn add_traceparent_column(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('queue')")
        .fetch_all(pool)
        .await?;
    if !columns.iter().any(|column| column == "traceparent") {
        sqlx::query("ALTER TABLE queue ADD COLUMN traceparent TEXT")
            .execute(pool)
            .await?;
    }
    Ok(())
}

type Reply = oneshot::Sender<Result<(), BrokerError>>;

/// Commits waiting operations in batches until the broker is dropped.
async fn run_writer(inner: std::sync::Weak<Inner>, pool: SqlitePool, mut ops: mpsc::Receiver<(WriteOp, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while ops.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = commit(&pool, &batch).await;
        let mut woken = Vec::new();
        for (op, reply) in batch.drain(..) {
            if let (Ok(()), WriteOp::Publish { subscribers, .. }) = (&result, &op) {
                woken.extend(subscribers.iter().cloned());
            }
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(match inner.upgrade() {
                    Some(inner) => inner.failed(clone_error(err)),
                    None => BrokerError::Unavailable(err.to_string()),
                }),
            };
            let _ = reply.send(answer);
        }
        if let Some(inner) = inner.upgrade() {
            woken.sort();
            woken.dedup();
            for subscriber in woken {
                inner.wakeup(&subscriber).notify_one();
            }
        }
    }
}

fn clone_error(err: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(err.to_string())
}

async fn commit(pool: &SqlitePool, batch: &[(WriteOp, Reply)]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (op, _) in batch {
        match op {
            WriteOp::Publish {
                subscribers,
                topic,
                payload,
                traceparent,
            } => {
                let now = now_unix_ms() as i64;
                for subscriber in subscribers {
                    sqlx::query(
                        "INSERT INTO queue (subscriber, topic, payload, published_at_ms, traceparent) VALUES (?, ?, ?, ?, ?)",
                    )
                    .bind(subscriber)
                    .bind(topic)
                    .bind(payload)
                    .bind(now)
                    .bind(traceparent)
                    .execute(&mut *tx)
                        .await?;
                }
            }
            WriteOp::Ack { id } => {
                sqlx::query("DELETE FROM queue WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::Attempt { id, attempts } => {
                sqlx::query("UPDATE queue SET attempts = ? WHERE id = ?")
                    .bind(i64::from(*attempts))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::DeadLetter { id, subscriber, letter } => {
                sqlx::query(
                    "INSERT INTO dead_letters (subscriber, topic, payload, attempts, error, published_at_ms, dead_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(subscriber)
                .bind(&letter.topic)
                .bind(&letter.payload)
                .bind(i64::from(letter.attempts))
                .bind(&letter.error)
                .bind(letter.published_at_ms.unwrap_or(0) as i64)
                .bind(now_unix_ms() as i64)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM queue WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await
}

#[async_trait::async_trait]
impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn declare(&self, subscriptions: &[SubscriptionSpec]) -> Result<(), BrokerError> {
        let mut declared = self
            .inner
            .subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for spec in subscriptions {
            declared.insert(spec.subscriber.clone(), spec.clone());
        }
        Ok(())
    }

    async fn check(&self) -> Result<(), BrokerError> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map_err(|err| self.inner.failed(err))?;
        if self.inner.writer.is_closed() {
            return Err(BrokerError::Unavailable(format!(
                "the embedded broker ({}) has stopped",
                self.inner.path
            )));
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, payload: &[u8], traceparent: Option<&str>) -> Result<(), BrokerError> {
        let subscribers: Vec<String> = self
            .inner
            .subscriptions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter(|spec| spec.matches(topic))
            .map(|spec| spec.subscriber.clone())
            .collect();
        if subscribers.is_empty() {
            // Like a topic exchange without a matching binding: nobody is listening for it.
            tracing::debug!(%topic, "published message matches no subscription");
            return Ok(());
        }
        self.inner
            .write(WriteOp::Publish {
                subscribers,
                topic: topic.to_string(),
                payload: payload.to_vec(),
                traceparent: traceparent.map(str::to_string),
            })
            .await
    }

    async fn consume(&self, subscription: &SubscriptionSpec, prefetch: u32) -> Result<Box<dyn Consumer>, BrokerError> {
        Ok(Box::new(EmbeddedConsumer {
            inner: self.inner.clone(),
            subscriber: subscription.subscriber.clone(),
            batch: prefetch.clamp(1, 256),
            after_id: 0,
            fetched: VecDeque::new(),
            wakeup: self.inner.wakeup(&subscription.subscriber),
        }))
    }

    async fn pending(&self, subscriber: &str) -> Result<u64, BrokerError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue WHERE subscriber = ?")
            .bind(subscriber)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|err| self.inner.failed(err))?;
        Ok(count as u64)
    }

    async fn dead_letters(&self, subscriber: Option<&str>) -> Result<Vec<DeadLetter>, BrokerError> {
        let rows = sqlx::query(
            "SELECT id, subscriber, topic, payload, attempts, error, published_at_ms, dead_at_ms FROM dead_letters \
             WHERE ?1 IS NULL OR subscriber = ?1 ORDER BY id",
        )
        .bind(subscriber)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|err| self.inner.failed(err))?;
        Ok(rows.iter().map(dead_letter_of).collect())
    }

    async fn replay(&self, subscriber: Option<&str>, ids: &[String]) -> Result<Vec<DeadLetter>, BrokerError> {
        let all = self.dead_letters(subscriber).await?;
        let chosen: Vec<DeadLetter> = if ids.is_empty() {
            all
        } else {
            if let Some(missing) = ids.iter().find(|id| !all.iter().any(|letter| &letter.id == *id)) {
                return Err(BrokerError::Invalid(format!(
                    "no dead letter with id `{missing}`{}; nothing was replayed (see `mosaic dlq list`)",
                    subscriber.map(|s| format!(" for `{s}`")).unwrap_or_default()
                )));
            }
            all.into_iter().filter(|letter| ids.contains(&letter.id)).collect()
        };
        // Every payload is decoded before anything moves, so that one unreadable letter replays none.
        let payloads = chosen
            .iter()
            .map(DeadLetter::payload_bytes)
            .collect::<Result<Vec<_>, _>>()?;
        let failed = |err| self.inner.failed(err);
        let mut tx = self.inner.pool.begin().await.map_err(failed)?;
        for (letter, payload) in chosen.iter().zip(payloads) {
            sqlx::query("INSERT INTO queue (subscriber, topic, payload, published_at_ms) VALUES (?, ?, ?, ?)")
                .bind(&letter.subscriber)
                .bind(&letter.topic)
                .bind(payload)
                .bind(now_unix_ms() as i64)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query("DELETE FROM dead_letters WHERE id = ?")
                .bind(letter.id.parse::<i64>().unwrap_or(-1))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        for letter in &chosen {
            self.inner.wakeup(&letter.subscriber).notify_one();
        }
        Ok(chosen)
    }
}

fn dead_letter_of(row: &sqlx::sqlite::SqliteRow) -> DeadLetter {
    let letter = NewDeadLetter {
        topic: row.get("topic"),
        payload: row.get("payload"),
        attempts: row.get::<i64, _>("attempts").clamp(0, i64::from(u32::MAX)) as u32,
        error: row.get("error"),
        published_at_ms: Some(row.get::<i64, _>("published_at_ms") as u64),
    };
    DeadLetter::new(
        row.get::<i64, _>("id").to_string(),
        row.get("subscriber"),
        &letter,
        row.get::<i64, _>("dead_at_ms") as u64,
    )
}

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    subscriber: String,
    batch: u32,
    /// The last row handed out; rows are read in id order, once per consumer.
    after_id: i64,
    fetched: VecDeque<Delivery>,
    wakeup: Arc<Notify>,
}

#[async_trait::async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            if let Some(delivery) = self.fetched.pop_front() {
                return Ok(delivery);
            }
            let rows = sqlx::query(
                "SELECT id, topic, payload, attempts, published_at_ms, traceparent FROM queue \
                 WHERE subscriber = ? AND id > ? ORDER BY id LIMIT ?",
            )
            .bind(&self.subscriber)
            .bind(self.after_id)
            .bind(i64::from(self.batch))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|err| self.inner.failed(err))?;
            if rows.is_empty() {
                // A publish after the query above leaves a permit, so this cannot miss it; the
                // timeout is only a safety net.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wakeup.notified()).await;
                continue;
            }
            for row in rows {
                let id: i64 = row.get("id");
                self.after_id = id;
                self.fetched.push_back(Delivery {
                    topic: row.get("topic"),
                    payload: row.get("payload"),
                    attempts: row.get::<i64, _>("attempts").clamp(0, i64::from(u32::MAX)) as u32,
                    published_at_ms: Some(row.get::<i64, _>("published_at_ms") as u64),
                    traceparent: row.get("traceparent"),
                    settle: Box::new(EmbeddedSettle {
                        inner: self.inner.clone(),
                        id,
                        subscriber: self.subscriber.clone(),
                    }),
                });
            }
        }
    }
}

struct EmbeddedSettle {
    inner: Arc<Inner>,
    id: i64,
    subscriber: String,
}

#[async_trait::async_trait]
impl Settle for EmbeddedSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.inner.write(WriteOp::Ack { id: self.id }).await
    }

    async fn failed_attempt(&self, attempts: u32) -> Result<(), BrokerError> {
        self.inner.write(WriteOp::Attempt { id: self.id, attempts }).await
    }

    async fn dead_letter(self: Box<Self>, letter: NewDeadLetter) -> Result<(), BrokerError> {
        let op = WriteOp::DeadLetter {
            id: self.id,
            subscriber: self.subscriber.clone(),
            letter,
        };
        self.inner.write(op).await
    }
}
