//! Instance reuse, as Spin 4 and `wasmtime serve` do it: one instance of a version serves
//! several HTTP requests at once (WASI 0.3) and then more in turn, up to the limits of its
//! [`ReusePolicy`], and retires when idle. Built on wasmtime-wasi-http's `ProxyHandler`, which
//! runs each instance as a worker task in its store's event loop and hands it requests.
//!
//! What Mosaic adds: its stores (limits, capabilities, grants), the request deadline, and
//! retirement on a swap: once a version is no longer live ([`InstancePool::retire`]), every
//! new request goes to the new version's pool; the old version's instances finish what was
//! routed to them before the flip and end as soon as they are idle, so that after a flip no
//! request reaches the old version and its instances are gone once drained.
//!
//! An instance that traps, or a request that passes its deadline, ends the instance: wasmtime
//! poisons a store that trapped, and the pool never hands it another request.
//!
//! What a guest keeps between requests: whatever its instance holds in memory (globals, lazy
//! statics, caches, open handles) stays until the instance retires, which may be after any
//! request. Nothing may depend on it: a request may always be the first on a fresh instance.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use crate::capability::grants::ComponentSpec;
use crate::capability::http_outbound::{ChainPosition, ChainedRequests};
use crate::instance::{InstanceFactory, InstanceState};
use crate::observe::TraceContext;
use crate::settings::ReusePolicy;

/// The instances of one version of one component that serve its HTTP requests.
pub struct InstancePool {
    handler: ProxyHandler<PoolState>,
    /// Cancelled when the version retires: its idle instances end. A busy one still takes
    /// the requests already queued for the pool (they were routed to this version before the
    /// flip; refusing them would leave them waiting forever, since no instance of the version
    /// would ever take them) and ends once idle.
    retired: CancellationToken,
}

/// What a request brings to the instance that serves it.
pub struct RequestContext {
    pub trace: Option<TraceContext>,
    /// The request's `tracing` span: the instance's output lines are logged in it.
    pub log_span: tracing::Span,
    /// The deploy-set generation the request's chain began in (`ChainPosition`).
    pub generation: u64,
    /// Set when the instance that served the request ends on an error (a trap, a deadline),
    /// even after the response head went out: a body it was still streaming is then cut
    /// short, and must not look complete.
    pub instance_failed: Arc<AtomicBool>,
}

impl InstancePool {
    /// `chain`: where the requests this pool serves stand in their chain of in-process calls
    /// (at the start, for the listener's). `live` counts the pool's instances (a version's pools share one).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pre: ProxyPre<InstanceState>,
        factory: InstanceFactory,
        spec: ComponentSpec,
        chained: Arc<dyn ChainedRequests>,
        chain: ChainPosition,
        policy: ReusePolicy,
        request_timeout: Duration,
        live: Arc<AtomicUsize>,
    ) -> Self {
        let retired = CancellationToken::new();
        let state = PoolState {
            live,
            pre,
            factory,
            spec,
            chained,
            chain,
            policy,
            request_timeout,
            retired: retired.clone(),
        };
        Self {
            handler: ProxyHandler::new(state),
            retired,
        }
    }

    /// Serves one request on an instance of the pool: an idle or not yet full one, or a new
    /// one. The error, when there is one, says what failed ([`PoolError`]).
    pub async fn handle(
        &self,
        context: RequestContext,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, wasmtime::Error> {
        self.handler.handle(context, request).await
    }

    /// The version is no longer live: its instances take no new request and end when their
    /// requests have.
    pub fn retire(&self) {
        self.retired.cancel();
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        self.retired.cancel();
    }
}

struct PoolState {
    live: Arc<AtomicUsize>,
    pre: ProxyPre<InstanceState>,
    factory: InstanceFactory,
    spec: ComponentSpec,
    chained: Arc<dyn ChainedRequests>,
    chain: ChainPosition,
    policy: ReusePolicy,
    request_timeout: Duration,
    retired: CancellationToken,
}

impl HandlerState for PoolState {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiration, Worker>> {
        let mut store: Store<InstanceState> = self
            .factory
            .new_reusable_store(&self.spec, self.chained.clone(), self.chain, self.request_timeout)
            .map_err(wasmtime::Error::from_anyhow)?;
        let proxy = match tokio::time::timeout(self.request_timeout, self.pre.instantiate_async(&mut store)).await {
            Ok(proxy) => proxy?,
            Err(_) => {
                return Err(wasmtime::format_err!(
                    "the instance did not start within the request timeout of {:?}",
                    self.request_timeout
                ))
            }
        };
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Instance {
            store,
            proxy,
            view: WasiHttpView::http,
            expiration: Expiration {
                idle: self.policy.idle,
                request_timeout: self.request_timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
                retired: Box::pin(self.retired.clone().cancelled_owned()),
            },
            state: Worker {
                requests: Mutex::new(Vec::new()),
                component: self.spec.name.clone(),
                live: self.live.clone(),
                policy: self.policy,
                request_timeout: self.request_timeout,
            },
        })
    }
}

/// One instance's acceptance of requests.
struct Worker {
    /// The failure flags of the requests this instance has started (weakly: a finished
    /// request's flag goes with its response).
    requests: Mutex<Vec<Weak<AtomicBool>>>,
    component: String,
    live: Arc<AtomicUsize>,
    policy: ReusePolicy,
    request_timeout: Duration,
}

impl WorkerState for Worker {
    type StoreData = InstanceState;
    type RequestData = RequestContext;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        // Not refused for the version's retirement: see `InstancePool::retired`.
        if total >= self.policy.max_requests as usize {
            ShouldAccept::Never
        } else if concurrent >= self.policy.max_concurrent as usize {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<InstanceState>,
        context: RequestContext,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        store.data_mut().begin_request(
            context.trace,
            context.log_span,
            Instant::now() + self.request_timeout,
            context.generation,
        );
        if let Ok(mut requests) = self.requests.lock() {
            requests.retain(|flag| flag.strong_count() > 0);
            requests.push(Arc::downgrade(&context.instance_failed));
        }
        Box::pin(tokio::time::sleep(self.request_timeout))
    }

    fn drop(&self, store: Store<InstanceState>, result: wasmtime::Result<()>) {
        if let Err(err) = result {
            let error = format!("{err:#}");
            if error == "worker panicked" {
                // wasmtime-wasi-http's word for a worker task dropped before it finished: the
                // runtime is going away with the host. (A real panic is reported by the
                // runtime itself.)
                tracing::debug!(component = %self.component, "an instance was dropped with its worker task");
            } else {
                // The request it was serving failed with a 5xx of its own; this says why.
                tracing::warn!(component = %self.component, %error, "an instance ended on an error and is not reused");
            }
            // Before the store goes (and with it the streams of bodies still being sent).
            if let Ok(requests) = self.requests.lock() {
                for flag in requests.iter().filter_map(Weak::upgrade) {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        }
        drop(store);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When an instance ends: idle past the policy's timeout, idle after its version retired, or
/// busy past a request's deadline (the second line of defence when a guest computes without
/// pause and the store's own timers cannot run).
struct Expiration {
    idle: Duration,
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    retired: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl WorkerExpiration for Expiration {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, start: Instant) -> Poll<()> {
        let this = self.get_mut();
        let budget = match status {
            // Only an idle instance waits for its version's retirement: a busy one ends once
            // idle.
            WorkerStatus::Idle if this.retired.as_mut().poll(cx).is_ready() => return Poll::Ready(()),
            WorkerStatus::Idle => this.idle,
            WorkerStatus::Requests | WorkerStatus::PostReturn => this.request_timeout,
        };
        let Some(deadline) = start.checked_add(budget) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}

/// Tells the errors of [`InstancePool::handle`] apart.
pub enum PoolError {
    /// No instance could be made (or it did not start).
    Instantiate(String),
    /// The request passed its deadline.
    Deadline,
    /// The instance trapped or ended while serving the request.
    Trap(String),
}

impl PoolError {
    /// `overdue`: the request has run for its whole deadline. An instance stopped for
    /// computing past it fails its request without saying why (an expired worker, a trap of
    /// the task, or — WASI 0.2 — "guest never invoked `response-outparam::set`"), so any
    /// failure of an overdue request but its instantiation is the deadline's.
    pub fn of(err: &wasmtime::Error, overdue: bool) -> PoolError {
        use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError, TrapOrPanicError};
        if let Some(instantiation) = err.downcast_ref::<InstantiationError<RequestContext>>() {
            return PoolError::Instantiate(format!("{:#}", instantiation.error));
        }
        if overdue || err.downcast_ref::<ExpirationError>().is_some() {
            return PoolError::Deadline;
        }
        if err.downcast_ref::<TrapOrPanicError>().is_some() {
            return PoolError::Trap(
                "the instance ended while serving this request (it trapped, or another request on it passed its deadline)"
                    .into(),
            );
        }
        let text = format!("{err:#}");
        if text.contains("guest timed out") {
            return PoolError::Deadline;
        }
        PoolError::Trap(text)
    }
}
