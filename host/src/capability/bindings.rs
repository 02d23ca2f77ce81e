//! The one place that runs `bindgen!`: host-side bindings of the interfaces in
//! `wit/mosaic.wit` (the vendored Spin WIT): what a guest imports, and the message handler a
//! `[[trigger.redis]]` component exports. WASI and wasi:http come from wasmtime-wasi.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mosaic:host/capabilities",
    imports: { default: async },
    with: {
        "fermyon:spin/key-value.store": crate::capability::key_value::OpenStore,
        "wasi:keyvalue/store.bucket": crate::capability::key_value::OpenStore,
        "wasi:keyvalue/atomics.cas": crate::capability::key_value::CasHandle,
        "fermyon:spin/sqlite.connection": crate::capability::sqlite::OpenDatabase,
        "spin:sqlite/sqlite.connection": crate::capability::sqlite::OpenDatabase,
        "fermyon:spin/mqtt.connection": crate::capability::unsupported::NoConnection,
        "fermyon:spin/mysql.connection": crate::capability::unsupported::NoConnection,
        "fermyon:spin/postgres.connection": crate::capability::postgres::PgConnection,
        "fermyon:spin/redis.connection": crate::capability::redis_client::RedisConnection,
        "spin:postgres/postgres@3.0.0.connection": crate::capability::postgres::PgConnection,
        "spin:postgres/postgres@4.0.0.connection": crate::capability::postgres::PgConnection,
    },
});

pub use fermyon::spin2_0_0::key_value as spin_key_value;
pub use fermyon::spin2_0_0::sqlite as spin_sqlite;
pub use fermyon::spin2_0_0::variables;
pub use fermyon::spin2_0_0::{
    llm as spin_llm, mqtt as spin_mqtt, mysql as spin_mysql, postgres as spin_postgres,
    rdbms_types as spin_rdbms_types, redis as spin_redis,
};
pub use spin::postgres3_0_0::postgres as spin_postgres3;
pub use spin::postgres4_0_0::postgres as spin_postgres4;
pub use spin::sqlite::sqlite as spin_sqlite3;
pub use wasi::config::store as config_store;
pub use wasi::keyvalue::{atomics as wasi_atomics, batch as wasi_batch, store as wasi_store};

/// The export of a `[[trigger.redis]]` component (`fermyon:spin/inbound-redis`).
pub mod subscriber {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mosaic:host/redis-subscriber",
        exports: { default: async },
    });
}
