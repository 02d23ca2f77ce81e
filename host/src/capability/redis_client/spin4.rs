//! `spin:redis/redis@3.0.0` (Spin 4, component-model async): the same client as
//! `fermyon:spin/redis@2.0.0`, each function a concurrent call. `publish` goes to the host's
//! durable broker, as 2.0's does; the data operations go to the Redis server the connection
//! names, checked against `allowed_outbound_hosts` when it is opened.

use wasmtime::component::{Accessor, Resource};

use super::{redis_types, Argument, RedisConnection, RedisErrors, RedisImports, Reply, Target};
use crate::capability::bindings::spin_redis3 as v3;
use crate::capability::with_view;

redis_types!(v3);

fn target<T>(
    accessor: &Accessor<T, RedisImports>,
    connection: &Resource<RedisConnection>,
) -> Result<Target, v3::Error> {
    with_view(accessor, |view| view.redis_target(connection))
}

impl v3::Host for super::RedisView<'_> {}

impl v3::HostConnection for super::RedisView<'_> {
    async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table_mut().delete(c)?;
        Ok(())
    }
}

impl<T> v3::HostConnectionWithStore<T> for RedisImports {
    async fn open(accessor: &Accessor<T, Self>, address: String) -> Result<Resource<RedisConnection>, v3::Error> {
        with_view(accessor, |mut view| view.open_connection(address))
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), v3::Error> {
        let access = with_view(accessor, |view| {
            view.redis_target::<v3::Error>(&c)?;
            Ok::<_, v3::Error>(view.redis().clone())
        })?;
        access.publish(&channel, &payload).await
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, v3::Error> {
        target(accessor, &c)?.get(key).await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), v3::Error> {
        target(accessor, &c)?.set(key, value).await
    }

    async fn incr(accessor: &Accessor<T, Self>, c: Resource<RedisConnection>, key: String) -> Result<i64, v3::Error> {
        target(accessor, &c)?.incr(key).await
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Result<u32, v3::Error> {
        target(accessor, &c)?.del(keys).await
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, v3::Error> {
        target(accessor, &c)?.sadd(key, values).await
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, v3::Error> {
        target(accessor, &c)?.smembers(key).await
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, v3::Error> {
        target(accessor, &c)?.srem(key, values).await
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<v3::RedisParameter>,
    ) -> Result<Vec<v3::RedisResult>, v3::Error> {
        let arguments: Vec<Argument> = arguments.into_iter().map(Into::into).collect();
        let replies: Vec<Reply> = target(accessor, &c)?.execute(&command, arguments).await?;
        Ok(replies.into_iter().map(Into::into).collect())
    }
}
