//! What a guest imports from the host: one folder per capability, each with the same shape,
//! the way Spin's factors and wasmtime's `WasiHttpView` are built:
//!
//! - its settings section (where it has one, e.g. `messaging/settings.rs`);
//! - the app-wide state it builds once from the manifest, the runtime config and the settings
//!   (stores, pools, the broker), which implements [`Capability`] for readiness and metrics;
//! - the per-instance state an instance of a component holds (its grants and handles), and the
//!   view of it handed to the guest, on which the WIT host traits are implemented;
//! - `add_to_linker`, which links its interfaces for any store data that can give that view.
//!
//! A capability never reaches into another one; `crate::instance` is the one module that
//! knows them all, and `crate::host` builds the list once.

pub mod bindings;
pub mod grants;
pub mod http_outbound;
pub mod key_value;
pub mod messaging;
pub mod mqtt;
pub mod mysql;
pub mod otel;
pub mod postgres;
pub mod redis_client;
pub mod sockets;
pub mod sqlite;
pub mod unsupported;
pub mod variables;

use std::future::Future;
use std::time::Duration;

/// How long one readiness check may take before it counts as failed.
pub const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of one readiness check, named as `/readyz` lists it (`broker embedded`,
/// `key_value cache`, `postgres host=...`).
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub outcome: Result<(), String>,
}

/// What `/metrics` reads from a backend at scrape time rather than counting as it happens.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Messages waiting, per subscribing component.
    pub pending: Vec<(String, u64)>,
}

/// The part of a capability the rest of the host sees: its readiness and its scraped metrics.
#[async_trait::async_trait]
pub trait Capability: Send + Sync {
    /// One check per backend server in use; none for a capability that has no server.
    async fn readiness(&self) -> Vec<Check> {
        Vec::new()
    }

    /// Adds what only the backend knows (e.g. pending messages) to a `/metrics` scrape.
    async fn scrape(&self, _into: &mut Scrape) {}
}

/// The borrow of one capability's state in an instance, with the instance's resource table:
/// what its guest view is made of.
pub struct InstanceParts<'a, I> {
    pub state: &'a mut I,
    pub table: &'a mut wasmtime::component::ResourceTable,
}

/// Store data that holds the instance state `I` of a capability (`crate::instance` implements
/// it once per capability).
pub trait HasInstance<I> {
    fn instance_parts(&mut self) -> InstanceParts<'_, I>;
}

/// A capability a guest imports: it builds an instance's state from the component's grants and
/// links its interfaces for any store data that holds that state.
pub trait GuestCapability: Capability + 'static {
    /// What one instance holds: its grants and handles to the app-wide state.
    type Instance: Send + Sync + 'static;

    fn instance(self: &std::sync::Arc<Self>, component: &grants::ComponentSpec) -> Self::Instance;

    fn add_to_linker<T: HasInstance<Self::Instance> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()>;
}

/// The guest's view of a capability inside a concurrent host call (a WIT `async func` of the
/// Spin 4 interfaces, component-model async): `f` runs on it at once, and what it returns must
/// not borrow the store; awaiting happens outside, on what it cloned.
pub fn with_view<T, D, R>(accessor: &wasmtime::component::Accessor<T, D>, f: impl FnOnce(D::Data<'_>) -> R) -> R
where
    T: 'static,
    D: wasmtime::component::HasData + ?Sized,
{
    accessor.with(|mut access| f(access.get()))
}

/// A listing as the Spin 4 interfaces hand it out: a stream of items and the future that says
/// whether it ended well.
pub type Listing<I, E> = (
    wasmtime::component::StreamReader<I>,
    wasmtime::component::FutureReader<Result<(), E>>,
);

/// The guest's end of a stream whose items a host task sends as they come (a PostgreSQL query's
/// rows): each read hands over what has arrived, up to what the guest asked for, and waits when
/// nothing has. The stream ends when the sender goes; dropping it (the guest closed the stream)
/// makes the sender's next send fail, which stops the task.
pub struct ChannelStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T, D> wasmtime::component::StreamProducer<D> for ChannelStream<T>
where
    T: Send + Sync + 'static,
{
    type Item = T;
    type Buffer = wasmtime::component::VecBuffer<T>;

    fn poll_produce<'a>(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        store: wasmtime::StoreContextMut<'a, D>,
        mut destination: wasmtime::component::Destination<'a, T, Self::Buffer>,
        finish: bool,
    ) -> std::task::Poll<wasmtime::Result<wasmtime::component::StreamResult>> {
        use std::task::Poll;
        use wasmtime::component::StreamResult;
        let receiver = &mut self.get_mut().0;
        let wanted = match destination.remaining(store) {
            // A zero-length read asks whether items are ready: say yes without taking any, so
            // that none is buffered for a read that may never come.
            Some(0) => return Poll::Ready(Ok(StreamResult::Completed)),
            Some(wanted) => wanted,
            None => usize::MAX,
        };
        let first = match receiver.poll_recv(cx) {
            Poll::Ready(Some(item)) => item,
            Poll::Ready(None) => return Poll::Ready(Ok(StreamResult::Dropped)),
            Poll::Pending if finish => return Poll::Ready(Ok(StreamResult::Cancelled)),
            Poll::Pending => return Poll::Pending,
        };
        let mut items = vec![first];
        while items.len() < wanted {
            match receiver.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        destination.set_buffer(items.into());
        Poll::Ready(Ok(StreamResult::Completed))
    }
}

/// A listing for the guest (rows, keys): the items `producer` gives (a `Vec` read in full, or
/// a [`ChannelStream`] fed by a host task), then the outcome `end` resolves to.
pub fn listing<T, D, I, E>(
    accessor: &wasmtime::component::Accessor<T, D>,
    producer: impl wasmtime::component::StreamProducer<T, Item = I>,
    end: impl Future<Output = Result<(), E>> + Send + 'static,
) -> wasmtime::Result<Listing<I, E>>
where
    T: 'static,
    D: wasmtime::component::HasData + ?Sized,
    I: wasmtime::component::ComponentType
        + wasmtime::component::Lift
        + wasmtime::component::Lower
        + Send
        + Sync
        + 'static,
    E: wasmtime::component::ComponentType
        + wasmtime::component::Lift
        + wasmtime::component::Lower
        + Send
        + Sync
        + 'static,
{
    accessor.with(|mut access| {
        let stream = wasmtime::component::StreamReader::new(&mut access, producer)?;
        let end =
            wasmtime::component::FutureReader::new(&mut access, async move { Ok::<_, wasmtime::Error>(end.await) })?;
        Ok((stream, end))
    })
}

/// Runs one readiness check, bounded by [`READINESS_CHECK_TIMEOUT`].
pub async fn bounded_check<E: std::fmt::Display>(name: String, check: impl Future<Output = Result<(), E>>) -> Check {
    let outcome = match tokio::time::timeout(READINESS_CHECK_TIMEOUT, check).await {
        Ok(outcome) => outcome.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no answer within {READINESS_CHECK_TIMEOUT:?}")),
    };
    Check { name, outcome }
}

/// The outcomes of checking every server of one kind, each named `KIND NAME`; one failed check
/// named `KIND` if they take longer than the readiness timeout together.
pub async fn server_checks<E>(
    kind: &str,
    checks: impl Future<Output = Vec<(String, Result<(), E>)>>,
    why: impl Fn(E) -> String,
) -> Vec<Check> {
    match tokio::time::timeout(READINESS_CHECK_TIMEOUT, checks).await {
        Ok(outcomes) => outcomes
            .into_iter()
            .map(|(name, outcome)| Check {
                name: format!("{kind} {name}"),
                outcome: outcome.map_err(&why),
            })
            .collect(),
        Err(_) => vec![Check {
            name: kind.to_string(),
            outcome: Err(format!("no answer within {READINESS_CHECK_TIMEOUT:?}")),
        }],
    }
}

/// Declares the guest's view of a capability (the WIT host traits are implemented on it): a
/// borrow of its per-instance state and of the instance's resource table, and the
/// `wasmtime::component::HasData` marker its `add_to_linker` passes to the bindings.
macro_rules! guest_view {
    ($(#[$doc:meta])* $view:ident, $marker:ident, $state:ty, $accessor:ident, $view_of:ident) => {
        $(#[$doc])*
        pub struct $view<'a> {
            state: &'a $state,
            table: &'a mut wasmtime::component::ResourceTable,
        }

        impl<'a> $view<'a> {
            pub fn new(state: &'a $state, table: &'a mut wasmtime::component::ResourceTable) -> Self {
                Self { state, table }
            }

            #[allow(dead_code)]
            fn $accessor(&self) -> &'a $state {
                self.state
            }

            #[allow(dead_code)]
            fn table(&self) -> &wasmtime::component::ResourceTable {
                self.table
            }

            #[allow(dead_code)]
            fn table_mut(&mut self) -> &mut wasmtime::component::ResourceTable {
                self.table
            }
        }

        /// The view of the store data `data` (a `fn` pointer for the bindings' `add_to_linker`).
        fn $view_of<T: $crate::capability::HasInstance<$state>>(data: &mut T) -> $view<'_> {
            let parts = data.instance_parts();
            $view::new(parts.state, parts.table)
        }

        /// The `HasData` marker of the view.
        pub struct $marker;

        impl wasmtime::component::HasData for $marker {
            type Data<'a> = $view<'a>;
        }
    };
}
pub(crate) use guest_view;
