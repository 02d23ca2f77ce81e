//! `spin:key-value/key-value@3.0.0` (Spin 4, component-model async) over the same stores and
//! grants as `fermyon:spin/key-value@2.0.0`: a label the component is not granted is
//! `error::access-denied`, an error value. `get-keys` streams the keys as it pages through the
//! store (`wasi:keyvalue`'s pages), never the whole keyspace at once.

use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use super::guest::OpenError;
use super::{check_key, check_value, KeyValueImports, KvError, OpenStore};
use crate::capability::bindings::spin_key_value3 as v3;
use crate::capability::{listing, with_view, ChannelStream};

/// Keys read from the store per page, and at most this many ahead of the guest.
const KEYS_PAGE: usize = 256;

fn to_v3(err: KvError) -> v3::Error {
    v3::Error::Other(err.to_string())
}

fn open_error(err: OpenError) -> v3::Error {
    match err {
        OpenError::Denied => v3::Error::AccessDenied,
        OpenError::Backend(err) => to_v3(err),
    }
}

/// The store behind a guest's handle, taken out of the view before any await.
fn store_of<T>(
    accessor: &Accessor<T, KeyValueImports>,
    handle: &Resource<OpenStore>,
) -> Result<std::sync::Arc<dyn super::KeyValueStore>, v3::Error> {
    with_view(accessor, |view| view.store_of(handle)).map_err(to_v3)
}

impl v3::Host for super::KeyValueView<'_> {}

impl v3::HostStore for super::KeyValueView<'_> {
    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table_mut().delete(store)?;
        Ok(())
    }
}

impl<T> v3::HostStoreWithStore<T> for KeyValueImports {
    async fn open(accessor: &Accessor<T, Self>, label: String) -> Result<Resource<OpenStore>, v3::Error> {
        let access = with_view(accessor, |view| view.key_value().clone());
        let open = access.open_granted(&label).await.map_err(open_error)?;
        with_view(accessor, |mut view| view.table_mut().push(open)).map_err(|_| v3::Error::StoreTableFull)
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, v3::Error> {
        store_of(accessor, &store)?.get(&key).await.map_err(to_v3)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), v3::Error> {
        check_key(&key).and_then(|_| check_value(&value)).map_err(to_v3)?;
        store_of(accessor, &store)?.set(&key, &value).await.map_err(to_v3)
    }

    async fn delete(accessor: &Accessor<T, Self>, store: Resource<OpenStore>, key: String) -> Result<(), v3::Error> {
        store_of(accessor, &store)?.delete(&key).await.map_err(to_v3)
    }

    async fn exists(accessor: &Accessor<T, Self>, store: Resource<OpenStore>, key: String) -> Result<bool, v3::Error> {
        store_of(accessor, &store)?.exists(&key).await.map_err(to_v3)
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), v3::Error>>)> {
        let store = match store_of(accessor, &store) {
            Ok(store) => store,
            Err(err) => return listing(accessor, Vec::new(), async move { Err(err) }),
        };
        // A task pages through the store, a page ahead of the guest at most.
        let (sender, keys) = tokio::sync::mpsc::channel(KEYS_PAGE);
        let (end_sender, end) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut cursor: Option<String> = None;
            let outcome = loop {
                let page = match store.keys_page(cursor.as_deref(), KEYS_PAGE).await {
                    Ok(page) => page,
                    Err(err) => break Err(to_v3(err)),
                };
                for key in page.keys {
                    if sender.send(key).await.is_err() {
                        // The guest closed the stream: nobody wants the rest.
                        return;
                    }
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break Ok(()),
                }
            };
            let _ = end_sender.send(outcome);
        });
        listing(
            accessor,
            ChannelStream(keys),
            async move { end.await.unwrap_or(Ok(())) },
        )
    }
}
