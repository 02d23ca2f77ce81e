//! The Redis client of `fermyon:spin/redis@2.0.0`: a guest opens `redis://HOST:PORT[/DB]`
//! (checked against its `allowed_outbound_hosts`, as in Spin) and runs data operations (get,
//! set, incr, del, sets, any command through `execute`) on that server. One multiplexed,
//! self-reconnecting connection per address is shared by every instance; it is opened on the
//! first data operation, so a connection used only to publish needs no Redis server.
//!
//! `publish` goes to the host's message broker (the messaging capability), not to Redis: the
//! `[[trigger.redis]]` subscribers of this application receive it durably, at least once.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use wasmtime::component::Resource;

use crate::capability::bindings::spin_redis as wit;

/// Connections by address, opened on first use; a connect to one address never waits for
/// another address's connect.
pub struct RedisClients {
    open: crate::backends::OpenedByKey<ConnectionManager, String>,
    metrics: Arc<crate::observe::Metrics>,
}

impl RedisClients {
    pub fn new(metrics: Arc<crate::observe::Metrics>) -> RedisClients {
        RedisClients {
            open: Default::default(),
            metrics,
        }
    }

    async fn connect(&self, address: &str) -> Result<ConnectionManager, String> {
        let metrics = self.metrics.clone();
        let target = address.to_string();
        self.open
            .get_or_open(address, move || async move {
                crate::backends::redis_connection(&target)
                    .await
                    .inspect_err(|_| metrics.record_backend_error("redis", "redis"))
            })
            .await
    }
}

/// An open connection in a guest's resource table: the address it names.
pub struct RedisConnection {
    address: String,
}

fn other(err: redis::RedisError) -> wit::Error {
    match err.kind() {
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => wit::Error::TypeError,
        _ => wit::Error::Other(err.to_string()),
    }
}

/// What one instance may reach: the shared connections, through its `allowed_outbound_hosts`;
/// and where its `publish` goes (the messaging capability's broker, with the trace it serves).
#[derive(Clone)]
pub struct RedisAccess {
    pub clients: Arc<RedisClients>,
    pub allowed: Arc<mosaic_manifest::allowed_hosts::AllowedHosts>,
    pub publisher: crate::capability::messaging::Publisher,
    /// The `traceparent` a published message carries: the trace of the request or delivery the
    /// instance serves.
    pub traceparent: Option<String>,
}

/// The Redis capability, app-wide: the shared connections, and where a guest's `publish` goes
/// (the messaging capability's broker, through its [`Publisher`](crate::capability::messaging::Publisher)).
pub struct Redis {
    clients: Arc<RedisClients>,
    publisher: crate::capability::messaging::Publisher,
}

impl Redis {
    pub fn new(clients: RedisClients, publisher: crate::capability::messaging::Publisher) -> Redis {
        Redis {
            clients: Arc::new(clients),
            publisher,
        }
    }
}

/// Redis servers are checked by the key-value stores that live on them, not per guest address.
impl super::Capability for Redis {}

super::guest_view!(
    /// The guest's view of the Redis client: its instance's access and resource table.
    RedisView,
    RedisImports,
    RedisAccess,
    redis,
    redis_view
);

impl super::GuestCapability for Redis {
    type Instance = RedisAccess;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> RedisAccess {
        RedisAccess {
            clients: self.clients.clone(),
            allowed: component.allowed_hosts.clone(),
            publisher: self.publisher.clone(),
            traceparent: None,
        }
    }

    fn add_to_linker<T: super::HasInstance<RedisAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        // fermyon:spin/redis@2.0.0
        wit::add_to_linker::<T, RedisImports>(linker, redis_view::<T>)?;
        Ok(())
    }
}

impl RedisView<'_> {
    /// The shared connections and the address a guest's connection names (taken before any
    /// await: the view borrows the instance state).
    fn redis_target(&self, connection: &Resource<RedisConnection>) -> Result<(Arc<RedisClients>, String), wit::Error> {
        let address = self
            .table()
            .get(connection)
            .map(|open| open.address.clone())
            .map_err(|err| wit::Error::Other(format!("invalid connection handle: {err}")))?;
        Ok((self.redis().clients.clone(), address))
    }
}

async fn connect((clients, address): (Arc<RedisClients>, String)) -> Result<ConnectionManager, wit::Error> {
    clients.connect(&address).await.map_err(wit::Error::Other)
}

fn to_result(value: redis::Value) -> wit::RedisResult {
    match value {
        redis::Value::Nil => wit::RedisResult::Nil,
        redis::Value::Int(n) => wit::RedisResult::Int64(n),
        redis::Value::BulkString(bytes) => wit::RedisResult::Binary(bytes),
        redis::Value::SimpleString(status) => wit::RedisResult::Status(status),
        redis::Value::Okay => wit::RedisResult::Status("OK".into()),
        redis::Value::Boolean(b) => wit::RedisResult::Int64(i64::from(b)),
        redis::Value::Double(d) => wit::RedisResult::Binary(d.to_string().into_bytes()),
        redis::Value::VerbatimString { text, .. } => wit::RedisResult::Binary(text.into_bytes()),
        other => wit::RedisResult::Binary(format!("{other:?}").into_bytes()),
    }
}

impl wit::Host for RedisView<'_> {}

impl wit::HostConnection for RedisView<'_> {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, wit::Error> {
        let uri: http::Uri = address.parse().map_err(|_| wit::Error::InvalidAddress)?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(wit::Error::InvalidAddress);
        };
        if !self.redis().allowed.allows(scheme, host, uri.port_u16()) {
            return Err(wit::Error::Other(format!(
                "{scheme}://{host} is not in this component's allowed_outbound_hosts"
            )));
        }
        self.table_mut()
            .push(RedisConnection { address })
            .map_err(|_| wit::Error::TooManyConnections)
    }

    async fn publish(
        &mut self,
        c: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), wit::Error> {
        self.table()
            .get(&c)
            .map_err(|err| wit::Error::Other(format!("invalid connection handle: {err}")))?;
        let publisher = self.redis().publisher.clone();
        let traceparent = self.redis().traceparent.clone();
        publisher
            .publish(&channel, &payload, traceparent.as_deref())
            .await
            .map_err(|err| wit::Error::Other(format!("publish to `{channel}` failed: {err}")))
    }

    async fn get(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Option<Vec<u8>>, wit::Error> {
        connect(self.redis_target(&c)?).await?.get(key).await.map_err(other)
    }

    async fn set(&mut self, c: Resource<RedisConnection>, key: String, value: Vec<u8>) -> Result<(), wit::Error> {
        connect(self.redis_target(&c)?)
            .await?
            .set(key, value)
            .await
            .map_err(other)
    }

    async fn incr(&mut self, c: Resource<RedisConnection>, key: String) -> Result<i64, wit::Error> {
        connect(self.redis_target(&c)?).await?.incr(key, 1).await.map_err(other)
    }

    async fn del(&mut self, c: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, wit::Error> {
        connect(self.redis_target(&c)?).await?.del(keys).await.map_err(other)
    }

    async fn sadd(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit::Error> {
        connect(self.redis_target(&c)?)
            .await?
            .sadd(key, values)
            .await
            .map_err(other)
    }

    async fn smembers(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Vec<String>, wit::Error> {
        connect(self.redis_target(&c)?)
            .await?
            .smembers(key)
            .await
            .map_err(other)
    }

    async fn srem(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit::Error> {
        connect(self.redis_target(&c)?)
            .await?
            .srem(key, values)
            .await
            .map_err(other)
    }

    async fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<wit::RedisParameter>,
    ) -> Result<Vec<wit::RedisResult>, wit::Error> {
        let mut connection = connect(self.redis_target(&c)?).await?;
        let mut cmd = redis::cmd(&command);
        for argument in arguments {
            match argument {
                wit::RedisParameter::Int64(n) => cmd.arg(n),
                wit::RedisParameter::Binary(bytes) => cmd.arg(bytes),
            };
        }
        let value: redis::Value = cmd.query_async(&mut connection).await.map_err(other)?;
        Ok(match value {
            redis::Value::Array(items) | redis::Value::Set(items) => items.into_iter().map(to_result).collect(),
            single => vec![to_result(single)],
        })
    }

    async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table_mut().delete(c)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::RedisClients;

    /// A "Redis" that accepts connections and never answers, holding each one open.
    async fn hanging_redis() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("redis://{}/1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        address
    }

    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_hanging_address_does_not_stall_connects_to_another() {
        let clients = std::sync::Arc::new(RedisClients::new(Default::default()));
        let hanging = hanging_redis().await;
        let stalled = tokio::spawn({
            let clients = clients.clone();
            async move { clients.connect(&hanging).await.map(|_| ()) }
        });
        // Let the first connect reach the hanging server.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!stalled.is_finished(), "the hanging server should hold its connect");

        let started = Instant::now();
        let other = clients.connect(&format!("redis://127.0.0.1:{}/0", closed_port())).await;
        assert!(other.is_err(), "nothing listens there");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a connect to another address waited {:?} for the hanging one",
            started.elapsed()
        );
        stalled.abort();
    }

    #[tokio::test]
    async fn callers_of_one_address_share_one_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("redis://{}/1", listener.local_addr().unwrap());
        let clients = std::sync::Arc::new(RedisClients::new(Default::default()));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let clients = clients.clone();
                let address = address.clone();
                tokio::spawn(async move { clients.connect(&address).await.map(|_| ()) })
            })
            .collect();
        let (_first, _) = tokio::time::timeout(Duration::from_secs(2), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let another = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(
            another.is_err(),
            "four callers of one address opened more than one connection"
        );
        for caller in callers {
            caller.abort();
        }
    }

    #[tokio::test]
    async fn a_failed_connect_is_tried_again() {
        let clients = RedisClients::new(Default::default());
        let port = closed_port();
        let address = format!("redis://127.0.0.1:{port}/1");
        assert!(clients.connect(&address).await.is_err(), "nothing listens yet");

        // Now something listens there: the next connect must reach it, not replay the error.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let second = tokio::spawn(async move { clients.connect(&address).await.map(|_| ()) });
        let accepted = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
        assert!(accepted.is_ok(), "the second connect did not try the server again");
        second.abort();
    }
}
