//! The Redis client of `fermyon:spin/redis@2.0.0` and Spin 4's `spin:redis/redis@3.0.0` (the
//! same functions, async; in `spin4.rs`): a guest opens `redis://HOST:PORT[/DB]`
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
use crate::observe::TraceContext;

mod spin4;

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

/// The errors of `fermyon:spin/redis@2.0.0` and `spin:redis/redis@3.0.0` (the same variant,
/// two types).
trait RedisErrors: Sized {
    fn invalid_address() -> Self;
    fn too_many_connections() -> Self;
    fn type_error() -> Self;
    fn other(message: String) -> Self;

    fn from_redis(err: redis::RedisError) -> Self {
        match err.kind() {
            redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => Self::type_error(),
            _ => Self::other(err.to_string()),
        }
    }
}

/// One value of an `execute` reply, before it becomes either version's `redis-result`.
enum Reply {
    Nil,
    Status(String),
    Int64(i64),
    Binary(Vec<u8>),
}

/// One argument of `execute`, from either version's `redis-parameter`.
enum Argument {
    Int64(i64),
    Binary(Vec<u8>),
}

fn to_reply(value: redis::Value) -> Reply {
    match value {
        redis::Value::Nil => Reply::Nil,
        redis::Value::Int(n) => Reply::Int64(n),
        redis::Value::BulkString(bytes) => Reply::Binary(bytes),
        redis::Value::SimpleString(status) => Reply::Status(status),
        redis::Value::Okay => Reply::Status("OK".into()),
        redis::Value::Boolean(b) => Reply::Int64(i64::from(b)),
        redis::Value::Double(d) => Reply::Binary(d.to_string().into_bytes()),
        redis::Value::VerbatimString { text, .. } => Reply::Binary(text.into_bytes()),
        other => Reply::Binary(format!("{other:?}").into_bytes()),
    }
}

/// The error, reply and argument conversions of one version of the interface.
macro_rules! redis_types {
    ($module:ident) => {
        impl RedisErrors for $module::Error {
            fn invalid_address() -> Self {
                $module::Error::InvalidAddress
            }
            fn too_many_connections() -> Self {
                $module::Error::TooManyConnections
            }
            fn type_error() -> Self {
                $module::Error::TypeError
            }
            fn other(message: String) -> Self {
                $module::Error::Other(message)
            }
        }

        impl From<Reply> for $module::RedisResult {
            fn from(reply: Reply) -> Self {
                match reply {
                    Reply::Nil => $module::RedisResult::Nil,
                    Reply::Status(status) => $module::RedisResult::Status(status),
                    Reply::Int64(n) => $module::RedisResult::Int64(n),
                    Reply::Binary(bytes) => $module::RedisResult::Binary(bytes),
                }
            }
        }

        impl From<$module::RedisParameter> for Argument {
            fn from(parameter: $module::RedisParameter) -> Self {
                match parameter {
                    $module::RedisParameter::Int64(n) => Argument::Int64(n),
                    $module::RedisParameter::Binary(bytes) => Argument::Binary(bytes),
                }
            }
        }
    };
}
pub(crate) use redis_types;

redis_types!(wit);

/// What one instance may reach: the shared connections, through its `allowed_outbound_hosts`;
/// and where its `publish` goes (the messaging capability's broker, with the trace it serves).
#[derive(Clone)]
pub struct RedisAccess {
    pub clients: Arc<RedisClients>,
    pub allowed: Arc<mosaic_manifest::allowed_hosts::AllowedHosts>,
    pub publisher: crate::capability::messaging::Publisher,
    /// The trace of the request or delivery the instance serves: a published message carries
    /// it as its `traceparent`.
    pub trace: Option<Arc<TraceContext>>,
}

impl RedisAccess {
    /// Checks that a guest may open `address`: a URL whose host is in its
    /// `allowed_outbound_hosts`; `invalid-address` otherwise, as Spin answers.
    fn check_open<E: RedisErrors>(&self, address: &str) -> Result<(), E> {
        let uri: http::Uri = address.parse().map_err(|_| E::invalid_address())?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(E::invalid_address());
        };
        if !self.allowed.allows(scheme, host, uri.port_u16()) {
            // Spin's error value (it carries no text); the log says what to change. The
            // address may hold a password: only its scheme, host and port are logged.
            let port = uri.port_u16().map(|port| format!(":{port}")).unwrap_or_default();
            tracing::warn!(
                address = %format!("{scheme}://{host}{port}"),
                "a Redis connection was refused (invalid-address): add the address to the component's allowed_outbound_hosts"
            );
            return Err(E::invalid_address());
        }
        Ok(())
    }

    /// A guest's publish: to the host's broker, durably, with the trace the instance serves.
    async fn publish<E: RedisErrors>(&self, channel: &str, payload: &[u8]) -> Result<(), E> {
        self.publisher
            .publish(channel, payload, self.trace.as_deref())
            .await
            .map_err(|err| E::other(format!("publish to `{channel}` failed: {err}")))
    }
}

/// The server one guest connection names, with the shared connections: what a data operation
/// needs, taken out of the instance before any await.
struct Target {
    clients: Arc<RedisClients>,
    address: String,
}

impl Target {
    async fn connection<E: RedisErrors>(&self) -> Result<ConnectionManager, E> {
        self.clients.connect(&self.address).await.map_err(E::other)
    }

    async fn get<E: RedisErrors>(&self, key: String) -> Result<Option<Vec<u8>>, E> {
        self.connection::<E>().await?.get(key).await.map_err(E::from_redis)
    }

    async fn set<E: RedisErrors>(&self, key: String, value: Vec<u8>) -> Result<(), E> {
        self.connection::<E>()
            .await?
            .set(key, value)
            .await
            .map_err(E::from_redis)
    }

    async fn incr<E: RedisErrors>(&self, key: String) -> Result<i64, E> {
        self.connection::<E>().await?.incr(key, 1).await.map_err(E::from_redis)
    }

    async fn del<E: RedisErrors>(&self, keys: Vec<String>) -> Result<u32, E> {
        self.connection::<E>().await?.del(keys).await.map_err(E::from_redis)
    }

    async fn sadd<E: RedisErrors>(&self, key: String, values: Vec<String>) -> Result<u32, E> {
        self.connection::<E>()
            .await?
            .sadd(key, values)
            .await
            .map_err(E::from_redis)
    }

    async fn smembers<E: RedisErrors>(&self, key: String) -> Result<Vec<String>, E> {
        self.connection::<E>().await?.smembers(key).await.map_err(E::from_redis)
    }

    async fn srem<E: RedisErrors>(&self, key: String, values: Vec<String>) -> Result<u32, E> {
        self.connection::<E>()
            .await?
            .srem(key, values)
            .await
            .map_err(E::from_redis)
    }

    async fn execute<E: RedisErrors>(&self, command: &str, arguments: Vec<Argument>) -> Result<Vec<Reply>, E> {
        let mut connection = self.connection::<E>().await?;
        let mut cmd = redis::cmd(command);
        for argument in arguments {
            match argument {
                Argument::Int64(n) => cmd.arg(n),
                Argument::Binary(bytes) => cmd.arg(bytes),
            };
        }
        let value: redis::Value = cmd.query_async(&mut connection).await.map_err(E::from_redis)?;
        Ok(match value {
            redis::Value::Array(items) | redis::Value::Set(items) => items.into_iter().map(to_reply).collect(),
            single => vec![to_reply(single)],
        })
    }
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
            trace: None,
        }
    }

    fn add_to_linker<T: super::HasInstance<RedisAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use crate::capability::bindings::spin_redis3;
        // fermyon:spin/redis@2.0.0 and spin:redis/redis@3.0.0
        wit::add_to_linker::<T, RedisImports>(linker, redis_view::<T>)?;
        spin_redis3::add_to_linker::<T, RedisImports>(linker, redis_view::<T>)?;
        Ok(())
    }
}

impl RedisView<'_> {
    /// The server a guest's connection names (taken before any await: the view borrows the
    /// instance state).
    fn redis_target<E: RedisErrors>(&self, connection: &Resource<RedisConnection>) -> Result<Target, E> {
        let address = self
            .table()
            .get(connection)
            .map(|open| open.address.clone())
            .map_err(|err| E::other(format!("invalid connection handle: {err}")))?;
        Ok(Target {
            clients: self.redis().clients.clone(),
            address,
        })
    }

    /// Checks and opens a guest connection to `address` (no server is reached yet).
    fn open_connection<E: RedisErrors>(&mut self, address: String) -> Result<Resource<RedisConnection>, E> {
        self.redis().check_open::<E>(&address)?;
        self.table_mut()
            .push(RedisConnection { address })
            .map_err(|_| E::too_many_connections())
    }
}

impl wit::Host for RedisView<'_> {}

impl wit::HostConnection for RedisView<'_> {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, wit::Error> {
        self.open_connection(address)
    }

    async fn publish(
        &mut self,
        c: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), wit::Error> {
        self.redis_target::<wit::Error>(&c)?;
        let access = self.redis().clone();
        access.publish(&channel, &payload).await
    }

    async fn get(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Option<Vec<u8>>, wit::Error> {
        self.redis_target(&c)?.get(key).await
    }

    async fn set(&mut self, c: Resource<RedisConnection>, key: String, value: Vec<u8>) -> Result<(), wit::Error> {
        self.redis_target(&c)?.set(key, value).await
    }

    async fn incr(&mut self, c: Resource<RedisConnection>, key: String) -> Result<i64, wit::Error> {
        self.redis_target(&c)?.incr(key).await
    }

    async fn del(&mut self, c: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, wit::Error> {
        self.redis_target(&c)?.del(keys).await
    }

    async fn sadd(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit::Error> {
        self.redis_target(&c)?.sadd(key, values).await
    }

    async fn smembers(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Vec<String>, wit::Error> {
        self.redis_target(&c)?.smembers(key).await
    }

    async fn srem(
        &mut self,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, wit::Error> {
        self.redis_target(&c)?.srem(key, values).await
    }

    async fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<wit::RedisParameter>,
    ) -> Result<Vec<wit::RedisResult>, wit::Error> {
        let target = self.redis_target(&c)?;
        let replies = target
            .execute(&command, arguments.into_iter().map(Into::into).collect())
            .await?;
        Ok(replies.into_iter().map(Into::into).collect())
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
