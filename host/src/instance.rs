//! The per-instance host state (the `T` of `Store<T>`), the linker of the supported world, and
//! the construction of a store with its limits and deadline.
//!
//! This is the one module that knows every capability: the `capabilities!` list below declares
//! each one's app-wide state (in [`Capabilities`], built once by `crate::host`) and the state
//! an instance holds of it, links them all and lists them for `/readyz` and `/metrics`.
//! Adding a capability is its folder under `capability/`, a line here and a line in
//! `crate::host` where it is built.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capability::grants::ComponentSpec;
use crate::capability::http_outbound::{ChainPosition, ChainedRequests, OutboundHttp, OutboundPolicies};
use crate::capability::{Capability, GuestCapability, HasInstance, InstanceParts};
use crate::guest_log::{GuestOutput, GuestStream};
use crate::observe::{LiveInstance, TraceContext};
use crate::settings::Limits;

macro_rules! capabilities {
    ($($field:ident: $capability:ty),* $(,)?) => {
        /// Every capability's app-wide state, built once at start-up.
        pub struct Capabilities {
            $(pub $field: Arc<$capability>,)*
            /// Outbound HTTP's policies and circuit breakers. wasi:http is linked with WASI
            /// (wasmtime-wasi-http links it through `WasiHttpView` on the store data).
            pub outbound: Arc<OutboundPolicies>,
        }

        /// The state one instance holds of each capability.
        struct CapabilityInstances {
            $($field: <$capability as GuestCapability>::Instance,)*
        }

        $(
            impl HasInstance<<$capability as GuestCapability>::Instance> for InstanceState {
                fn instance_parts(&mut self) -> InstanceParts<'_, <$capability as GuestCapability>::Instance> {
                    InstanceParts {
                        state: &mut self.capabilities.$field,
                        table: &mut self.table,
                    }
                }
            }
        )*

        impl Capabilities {
            fn instances(&self, spec: &ComponentSpec) -> CapabilityInstances {
                CapabilityInstances {
                    $($field: self.$field.instance(spec),)*
                }
            }

            fn add_to_linker(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
                $(<$capability as GuestCapability>::add_to_linker(linker)?;)*
                Ok(())
            }

            /// Every capability, for readiness checks and metrics scrapes, in a fixed order.
            pub fn all(&self) -> Vec<&dyn Capability> {
                vec![$(&*self.$field as &dyn Capability,)* &*self.outbound as &dyn Capability]
            }
        }
    };
}

capabilities! {
    messaging: crate::capability::messaging::Messaging,
    variables: crate::capability::variables::ApplicationVariables,
    key_value: crate::capability::key_value::KeyValueStores,
    sqlite: crate::capability::sqlite::Databases,
    postgres: crate::capability::postgres::PgPools,
    mysql: crate::capability::mysql::MysqlPools,
    redis: crate::capability::redis_client::Redis,
    mqtt: crate::capability::mqtt::Mqtt,
    unsupported: crate::capability::unsupported::NoBackend,
    otel: crate::capability::otel::Otel,
}

pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundHttp,
    limits: StoreLimits,
    capabilities: CapabilityInstances,
    /// The span the guest's stdout and stderr lines are logged in.
    output: crate::guest_log::OutputContext,
    _live: LiveInstance,
}

impl InstanceState {
    /// The trace of the request this instance serves; its outbound calls and publishes carry
    /// it on.
    /// `log_span` is the request's `tracing` span, which the guest's output lines go into.
    pub fn set_trace(&mut self, trace: Option<TraceContext>, log_span: tracing::Span) {
        self.output.set(log_span);
        let trace = trace.map(Arc::new);
        self.capabilities.redis.trace = trace.clone();
        self.capabilities.otel.trace = trace.clone();
        self.capabilities.key_value.trace = trace.clone();
        self.capabilities.sqlite.trace = trace.clone();
        self.capabilities.postgres.trace = trace.clone();
        self.capabilities.mysql.trace = trace.clone();
        self.outbound.trace = trace;
    }

    /// A reused instance starts serving another request: its outbound calls carry that
    /// request's trace, stop at its deadline and keep to its deploy-set generation. (When
    /// several requests share an instance at once, the last one to start sets them.)
    pub fn begin_request(
        &mut self,
        trace: Option<TraceContext>,
        log_span: tracing::Span,
        deadline: Instant,
        generation: u64,
    ) {
        self.set_trace(trace, log_span);
        self.outbound.deadline = deadline;
        self.outbound.chain.generation = generation;
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

/// What a store does when the epoch ticks past the deadline.
#[derive(Clone, Copy)]
enum StoreDeadline {
    /// One request per instance: the guest traps past this budget.
    Trap(Duration),
    /// Reused: the guest yields; the pool enforces each request's budget.
    Yield(Duration),
}

/// The error a store raises when a request outlives its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request exceeded its deadline of {0:?}")]
pub struct DeadlineExceeded(pub Duration);

/// The linker of everything a guest may import. An import outside it fails the deploy.
pub fn build_linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
    Capabilities::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// How an instance is made: the engine, the limits every instance runs under and the
/// capabilities it is given. Held by the application; one call per request, delivery or probe.
#[derive(Clone)]
pub struct InstanceFactory {
    pub engine: Engine,
    pub limits: Limits,
    pub capabilities: Arc<Capabilities>,
    pub metrics: Arc<crate::observe::Metrics>,
}

impl InstanceFactory {
    /// A fresh store for one request (or one delivery or probe) of `spec`'s component; the
    /// guest traps when it computes past `timeout`.
    pub fn new_store(
        &self,
        spec: &ComponentSpec,
        chained: Arc<dyn ChainedRequests>,
        chain: ChainPosition,
        timeout: Duration,
    ) -> anyhow::Result<Store<InstanceState>> {
        self.store(spec, chained, chain, StoreDeadline::Trap(timeout))
    }

    /// A store for an instance that serves several requests (`crate::instance_pool`): the
    /// guest only yields at each epoch tick; the pool ends a request at its deadline, and the
    /// instance with it.
    pub fn new_reusable_store(
        &self,
        spec: &ComponentSpec,
        chained: Arc<dyn ChainedRequests>,
        chain: ChainPosition,
        request_timeout: Duration,
    ) -> anyhow::Result<Store<InstanceState>> {
        self.store(spec, chained, chain, StoreDeadline::Yield(request_timeout))
    }

    fn store(
        &self,
        spec: &ComponentSpec,
        chained: Arc<dyn ChainedRequests>,
        chain: ChainPosition,
        deadline_kind: StoreDeadline,
    ) -> anyhow::Result<Store<InstanceState>> {
        let timeout = match deadline_kind {
            StoreDeadline::Trap(timeout) | StoreDeadline::Yield(timeout) => timeout,
        };
        let mut wasi = WasiCtx::builder();
        let component: Arc<str> = Arc::from(spec.name.as_str());
        let output = crate::guest_log::OutputContext::default();
        wasi.stdout(GuestOutput::new(component.clone(), GuestStream::Stdout, output.clone()))
            .stderr(GuestOutput::new(component.clone(), GuestStream::Stderr, output.clone()));
        crate::capability::sockets::configure(&mut wasi, component.clone(), spec.allowed_hosts.clone());
        wasi.envs(&spec.environment);
        if let Some(dir) = &spec.files_dir {
            wasi.preopened_dir(dir, "/", FsPerms::ReadOnly)
                .map_err(|err| anyhow::anyhow!("cannot open the files of component `{}`: {err}", spec.name))?;
        }
        let deadline = Instant::now() + timeout;
        let outbound = OutboundHttp {
            component,
            allowed: spec.allowed_hosts.clone(),
            chained,
            chain,
            policies: self.capabilities.outbound.clone(),
            deadline,
            trace: None,
        };
        let state = InstanceState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound,
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.instance_memory_bytes() as usize)
                .trap_on_grow_failure(false)
                .build(),
            capabilities: self.capabilities.instances(spec),
            output,
            _live: LiveInstance::new(self.metrics.clone()),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        let traps = matches!(deadline_kind, StoreDeadline::Trap(_));
        store.epoch_deadline_callback(move |_| {
            if traps && Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineExceeded(timeout)))
            } else {
                // Yield so that a guest computing without pause never holds an executor thread.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }
}
