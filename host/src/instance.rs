//! The per-instance host state (the `T` of `Store<T>`), the linker of the supported world,
//! and the construction of a store with its limits and deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::app::App;
use crate::app::ComponentSpec;
use crate::capability::http_outbound::{ChainedRequests, OutboundHttp};
use crate::capability::key_value::KeyValueAccess;
use crate::capability::messaging::Publisher;
use crate::capability::redis_client::RedisClients;
use crate::capability::sqlite::SqliteAccess;
use crate::capability::variables::ComponentVariables;
use crate::guest_log::{GuestOutput, GuestStream};

pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundHttp,
    limits: StoreLimits,
    variables: ComponentVariables,
    key_value: KeyValueAccess,
    sqlite: SqliteAccess,
    redis_clients: Arc<RedisClients>,
    pg_pools: Arc<crate::capability::postgres::PgPools>,
    publisher: Publisher,
    _live: crate::observe::LiveInstance,
}

impl InstanceState {
    pub fn variables(&self) -> &ComponentVariables {
        &self.variables
    }
    pub fn key_value(&self) -> &KeyValueAccess {
        &self.key_value
    }
    pub fn sqlite(&self) -> &SqliteAccess {
        &self.sqlite
    }
    pub fn pg_pools(&self) -> &crate::capability::postgres::PgPools {
        &self.pg_pools
    }
    pub fn redis_clients_shared(&self) -> Arc<RedisClients> {
        self.redis_clients.clone()
    }
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
    /// Whether this component may connect to `scheme://host:port` (allowed_outbound_hosts).
    pub fn outbound_allowed(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.outbound.allowed.allows(scheme, host, port)
    }
    /// The trace of the request this instance serves; its outbound calls carry it on.
    pub fn set_trace(&mut self, trace: Option<crate::observe::TraceContext>) {
        self.outbound.trace = trace;
    }
    /// The `traceparent` naming this instance's span as the parent, if it serves a trace.
    pub fn traceparent(&self) -> Option<String> {
        self.outbound.trace.as_ref().map(|trace| trace.header_value())
    }
    pub fn table(&self) -> &ResourceTable {
        &self.table
    }
    pub fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.outbound,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// The error a store raises when a request outlives its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request exceeded its deadline of {0:?}")]
pub struct DeadlineExceeded(pub Duration);

/// Adds each named `crate::bindings` interface to the linker, served by `InstanceState`.
macro_rules! link_interfaces {
    ($linker:expr, $($interface:ident),* $(,)?) => {
        $(
            crate::bindings::$interface::add_to_linker::<_, HasSelf<InstanceState>>($linker, |state| state)
                .map_err(anyhow::Error::from)?;
        )*
    };
}

/// The linker of everything a guest may import. An import outside it fails the deploy.
pub fn build_linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    link_interfaces!(
        &mut linker,
        variables,
        config_store,
        spin_key_value,
        wasi_store,
        wasi_atomics,
        wasi_batch,
        spin_sqlite,
        spin_sqlite3,
        // Linked without a backend yet (capability::unsupported).
        spin_llm,
        spin_mqtt,
        spin_rdbms_types,
        spin_mysql,
        spin_postgres,
        spin_postgres3,
        spin_postgres4,
        spin_redis,
    );
    Ok(linker)
}

/// A fresh store for one request (or one probe) of `spec`'s component.
pub fn new_store(
    app: &App,
    spec: &ComponentSpec,
    chained: Arc<dyn ChainedRequests>,
    depth: u32,
    timeout: Duration,
) -> anyhow::Result<Store<InstanceState>> {
    let (engine, limits) = (&app.engine, &app.settings.limits);
    let mut wasi = WasiCtx::builder();
    let component: Arc<str> = Arc::from(spec.name.as_str());
    wasi.stdout(GuestOutput::new(component.clone(), GuestStream::Stdout))
        .stderr(GuestOutput::new(component, GuestStream::Stderr));
    wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    wasi.envs(&spec.environment);
    if let Some(dir) = &spec.files_dir {
        wasi.preopened_dir(dir, "/", FsPerms::ReadOnly)
            .map_err(|err| anyhow::anyhow!("cannot open the files of component `{}`: {err}", spec.name))?;
    }
    let deadline = Instant::now() + timeout;
    let outbound = OutboundHttp {
        component: Arc::from(spec.name.as_str()),
        allowed: spec.allowed_hosts.clone(),
        chained,
        depth,
        policies: app.outbound.clone(),
        deadline,
        trace: None,
    };
    let state = InstanceState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        outbound,
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.instance_memory_bytes() as usize)
            .trap_on_grow_failure(false)
            .build(),
        variables: spec.variables.clone(),
        key_value: KeyValueAccess {
            component: Arc::from(spec.name.as_str()),
            granted: spec.key_value_stores.clone(),
            stores: app.key_value.clone(),
        },
        sqlite: SqliteAccess {
            component: Arc::from(spec.name.as_str()),
            granted: spec.sqlite_databases.clone(),
            databases: app.sqlite.clone(),
        },
        redis_clients: app.redis_clients.clone(),
        pg_pools: app.pg_pools.clone(),
        publisher: Publisher {
            broker: app.broker.clone(),
            max_message_bytes: app.settings.messaging.max_message_bytes,
            metrics: app.metrics.clone(),
        },
        _live: crate::observe::LiveInstance::new(app.metrics.clone()),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(wasmtime::Error::new(DeadlineExceeded(timeout)))
        } else {
            // Yield so that a guest computing without pause never holds an executor thread.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    Ok(store)
}
