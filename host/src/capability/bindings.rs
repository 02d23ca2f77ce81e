//! The one place that runs `bindgen!`: host-side bindings of the interfaces in
//! `wit/mosaic.wit` (the vendored Spin WIT): what a guest imports, and the message handler a
//! `[[trigger.redis]]` component exports. WASI and wasi:http come from wasmtime-wasi.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mosaic:host/capabilities",
    imports: {
        // The Spin 4 functions that hand out a stream: a stream the store cannot make is a trap.
        "spin:key-value/key-value@3.0.0.[method]store.get-keys": trappable,
        "spin:sqlite/sqlite@3.1.0.[method]connection.execute-async": trappable,
        "spin:postgres/postgres@4.2.0.[method]connection.query-async": trappable,
        "spin:mysql/mysql@3.0.0.[method]connection.query": trappable,
        // A builder the resource table cannot hold is a trap too (the constructor has no error).
        "spin:postgres/postgres@4.2.0.[constructor]connection-builder": async | trappable,
        default: async,
    },
    with: {
        "fermyon:spin/key-value.store": crate::capability::key_value::OpenStore,
        "wasi:keyvalue/store.bucket": crate::capability::key_value::OpenStore,
        "wasi:keyvalue/atomics.cas": crate::capability::key_value::CasHandle,
        "fermyon:spin/sqlite.connection": crate::capability::sqlite::OpenDatabase,
        "spin:sqlite/sqlite@3.0.0.connection": crate::capability::sqlite::OpenDatabase,
        "fermyon:spin/mqtt.connection": crate::capability::mqtt::MqttConnection,
        "fermyon:spin/mysql.connection": crate::capability::mysql::MysqlConnection,
        "fermyon:spin/postgres.connection": crate::capability::postgres::PgConnection,
        "fermyon:spin/redis.connection": crate::capability::redis_client::RedisConnection,
        "spin:postgres/postgres@3.0.0.connection": crate::capability::postgres::PgConnection,
        "spin:postgres/postgres@4.0.0.connection": crate::capability::postgres::PgConnection,
        // Spin 4: the same resources as the 2.0 and 3.x interfaces.
        "spin:key-value/key-value@3.0.0.store": crate::capability::key_value::OpenStore,
        "spin:sqlite/sqlite@3.1.0.connection": crate::capability::sqlite::OpenDatabase,
        "spin:postgres/postgres@4.2.0.connection": crate::capability::postgres::PgConnection,
        "spin:postgres/postgres@4.2.0.connection-builder": crate::capability::postgres::PgConnectionBuilder,
        "spin:redis/redis@3.0.0.connection": crate::capability::redis_client::RedisConnection,
        "spin:mqtt/mqtt@3.0.0.connection": crate::capability::mqtt::MqttConnection,
        "spin:mysql/mysql@3.0.0.connection": crate::capability::mysql::MysqlConnection,
        // wasi:otel uses wasi:clocks@0.2.0's datetime: wasmtime-wasi's, not a copy.
        "wasi:clocks/wall-clock": wasmtime_wasi::p2::bindings::clocks::wall_clock,
        "wasi:clocks/monotonic-clock": wasmtime_wasi::p2::bindings::clocks::monotonic_clock,
    },
});

pub use fermyon::spin2_0_0::key_value as spin_key_value;
pub use fermyon::spin2_0_0::sqlite as spin_sqlite;
pub use fermyon::spin2_0_0::variables;
pub use fermyon::spin2_0_0::{
    llm as spin_llm, mqtt as spin_mqtt, mysql as spin_mysql, postgres as spin_postgres,
    rdbms_types as spin_rdbms_types, redis as spin_redis,
};
pub use spin::key_value::key_value as spin_key_value3;
pub use spin::mqtt::mqtt as spin_mqtt3;
pub use spin::mysql::mysql as spin_mysql3;
pub use spin::postgres3_0_0::postgres as spin_postgres3;
pub use spin::postgres4_0_0::postgres as spin_postgres4;
pub use spin::postgres4_2_0::postgres as spin_postgres4_2;
pub use spin::redis::redis as spin_redis3;
pub use spin::sqlite3_0_0::sqlite as spin_sqlite3;
pub use spin::sqlite3_1_0::sqlite as spin_sqlite3_1;
pub use spin::variables::variables as spin_variables3;
pub use wasi::config::store as config_store;
pub use wasi::keyvalue::{atomics as wasi_atomics, batch as wasi_batch, store as wasi_store};
pub use wasi::otel::{logs as otel_logs, metrics as otel_metrics, tracing as otel_tracing, types as otel_types};

/// The export of a `[[trigger.redis]]` component (`fermyon:spin/inbound-redis`).
pub mod subscriber {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mosaic:host/redis-subscriber",
        exports: { default: async },
    });

    /// The export of a spin-sdk 7 subscriber (`spin:redis/inbound-redis@3.0.0`, WASI 0.3): an
    /// async function, called inside the store's event loop.
    pub mod v3 {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "mosaic:host/redis-subscriber-v3",
            exports: { default: async | store },
        });
    }

    /// Either message handler a subscriber may export.
    pub enum SubscriberPre<T: 'static> {
        /// `fermyon:spin/inbound-redis` (spin-sdk 5, WASI 0.2).
        V2(RedisSubscriberPre<T>),
        /// `spin:redis/inbound-redis@3.0.0` (spin-sdk 7, WASI 0.3).
        V3(v3::RedisSubscriberV3Pre<T>),
    }

    impl<T: 'static> Clone for SubscriberPre<T> {
        fn clone(&self) -> Self {
            match self {
                SubscriberPre::V2(pre) => SubscriberPre::V2(pre.clone()),
                SubscriberPre::V3(pre) => SubscriberPre::V3(pre.clone()),
            }
        }
    }

    impl<T: Send + 'static> SubscriberPre<T> {
        /// The handler the component exports: the Spin 4 one, else the Spin 2 one.
        pub fn new(instance_pre: wasmtime::component::InstancePre<T>) -> wasmtime::Result<Self> {
            match v3::RedisSubscriberV3Pre::new(instance_pre.clone()) {
                Ok(pre) => Ok(SubscriberPre::V3(pre)),
                Err(_) => RedisSubscriberPre::new(instance_pre).map(SubscriberPre::V2),
            }
        }

        pub async fn instantiate_async(&self, store: &mut wasmtime::Store<T>) -> wasmtime::Result<()> {
            match self {
                SubscriberPre::V2(pre) => pre.instantiate_async(store).await.map(drop),
                SubscriberPre::V3(pre) => pre.instantiate_async(store).await.map(drop),
            }
        }

        /// Instantiates in `store` and hands `payload` to the handler; the outer error is a trap,
        /// the inner one the error value the handler returned.
        pub async fn deliver(
            &self,
            store: &mut wasmtime::Store<T>,
            payload: Vec<u8>,
        ) -> wasmtime::Result<Result<(), String>> {
            match self {
                SubscriberPre::V2(pre) => {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    let handled = instance
                        .fermyon_spin_inbound_redis()
                        .call_handle_message(&mut *store, &payload)
                        .await?;
                    Ok(handled.map_err(|error| format!("{error:?}")))
                }
                SubscriberPre::V3(pre) => {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    let handled = store
                        .run_concurrent(async move |accessor| {
                            instance
                                .spin_redis_inbound_redis()
                                .call_handle_message(accessor, payload)
                                .await
                        })
                        .await??;
                    Ok(handled.map_err(|error| format!("{error:?}")))
                }
            }
        }
    }
}

/// The export of a `[[trigger.mqtt]]` component: the handler of Spin's MQTT trigger plugin
/// (`handle-message` of `spin:mqtt-trigger@3.0.0`, an async function called inside the store's
/// event loop).
pub mod mqtt_handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mosaic:host/mqtt-handler",
        exports: { default: async | store },
    });
}
