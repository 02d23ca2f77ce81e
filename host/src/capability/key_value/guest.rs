//! The guest-facing side of key-value: `fermyon:spin/key-value@2.0.0` and
//! `wasi:keyvalue@0.2.0-draft2` implemented over [`super::KeyValueStore`].

use std::sync::Arc;

use wasmtime::component::Resource;

use super::{check_key, check_value, CasHandle, KeyValueAccess, KeyValueView, KvError, OpenStore};
use crate::capability::bindings::{spin_key_value as spin, wasi_atomics, wasi_batch, wasi_store};
use crate::observe::SpanParent;

/// The most keys one `list-keys` page returns.
const KEYS_PAGE: usize = 1000;

fn to_spin(err: KvError) -> spin::Error {
    spin::Error::Other(err.to_string())
}

fn to_wasi(err: KvError) -> wasi_store::Error {
    wasi_store::Error::Other(err.to_string())
}

impl KeyValueAccess {
    /// Opens `label` if this component is granted it: every key-value interface (Spin 2.0 and
    /// 3.0, wasi:keyvalue) opens through here.
    pub(super) async fn open_granted(&self, label: &str) -> Result<OpenStore, OpenError> {
        if !self.allows(label) {
            tracing::warn!(component = %self.component, store = %label, "key-value store not granted: add it to the component's key_value_stores");
            return Err(OpenError::Denied);
        }
        let mut store = self.stores.open(label).await.map_err(OpenError::Backend)?;
        if let Some(parent) = SpanParent::of(self.trace.as_ref(), self.stores.metrics.spans()) {
            store = Arc::new(super::traced::Traced {
                store,
                label: label.to_string(),
                // The embedded stores are SQLite files.
                backend: match self.stores.backend_name(label) {
                    "redis" => "redis",
                    _ => "sqlite",
                },
                parent,
            });
        }
        Ok(OpenStore {
            label: label.to_string(),
            store,
        })
    }
}

impl KeyValueView<'_> {
    async fn open_store(&mut self, label: &str) -> Result<OpenStore, OpenError> {
        let access = self.key_value().clone();
        access.open_granted(label).await
    }

    pub(super) fn store_of(
        &self,
        handle: &Resource<OpenStore>,
    ) -> Result<std::sync::Arc<dyn super::KeyValueStore>, KvError> {
        self.table()
            .get(handle)
            .map(|open| open.store.clone())
            .map_err(|err| KvError::Backend(format!("invalid store handle: {err}")))
    }
}

pub(super) enum OpenError {
    Denied,
    Backend(KvError),
}

impl spin::Host for KeyValueView<'_> {}

impl spin::HostStore for KeyValueView<'_> {
    async fn open(&mut self, label: String) -> Result<Resource<OpenStore>, spin::Error> {
        let open = match self.open_store(&label).await {
            Ok(open) => open,
            Err(OpenError::Denied) => return Err(spin::Error::AccessDenied),
            Err(OpenError::Backend(err)) => return Err(to_spin(err)),
        };
        self.table_mut().push(open).map_err(|_| spin::Error::StoreTableFull)
    }

    async fn get(&mut self, store: Resource<OpenStore>, key: String) -> Result<Option<Vec<u8>>, spin::Error> {
        let store = self.store_of(&store).map_err(to_spin)?;
        store.get(&key).await.map_err(to_spin)
    }

    async fn set(&mut self, store: Resource<OpenStore>, key: String, value: Vec<u8>) -> Result<(), spin::Error> {
        check_key(&key).and_then(|_| check_value(&value)).map_err(to_spin)?;
        let store = self.store_of(&store).map_err(to_spin)?;
        store.set(&key, &value).await.map_err(to_spin)
    }

    async fn delete(&mut self, store: Resource<OpenStore>, key: String) -> Result<(), spin::Error> {
        let store = self.store_of(&store).map_err(to_spin)?;
        store.delete(&key).await.map_err(to_spin)
    }

    async fn exists(&mut self, store: Resource<OpenStore>, key: String) -> Result<bool, spin::Error> {
        let store = self.store_of(&store).map_err(to_spin)?;
        store.exists(&key).await.map_err(to_spin)
    }

    async fn get_keys(&mut self, store: Resource<OpenStore>) -> Result<Vec<String>, spin::Error> {
        let store = self.store_of(&store).map_err(to_spin)?;
        store.keys().await.map_err(to_spin)
    }

    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table_mut().delete(store)?;
        Ok(())
    }
}

impl wasi_store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<OpenStore>, wasi_store::Error> {
        let open = match self.open_store(&identifier).await {
            Ok(open) => open,
            Err(OpenError::Denied) => return Err(wasi_store::Error::AccessDenied),
            Err(OpenError::Backend(err)) => return Err(to_wasi(err)),
        };
        self.table_mut()
            .push(open)
            .map_err(|err| wasi_store::Error::Other(err.to_string()))
    }
}

impl wasi_store::HostBucket for KeyValueView<'_> {
    async fn get(&mut self, bucket: Resource<OpenStore>, key: String) -> Result<Option<Vec<u8>>, wasi_store::Error> {
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        store.get(&key).await.map_err(to_wasi)
    }

    async fn set(&mut self, bucket: Resource<OpenStore>, key: String, value: Vec<u8>) -> Result<(), wasi_store::Error> {
        check_key(&key).and_then(|_| check_value(&value)).map_err(to_wasi)?;
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        store.set(&key, &value).await.map_err(to_wasi)
    }

    async fn delete(&mut self, bucket: Resource<OpenStore>, key: String) -> Result<(), wasi_store::Error> {
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        store.delete(&key).await.map_err(to_wasi)
    }

    async fn exists(&mut self, bucket: Resource<OpenStore>, key: String) -> Result<bool, wasi_store::Error> {
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        store.exists(&key).await.map_err(to_wasi)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<OpenStore>,
        cursor: Option<String>,
    ) -> Result<wasi_store::KeyResponse, wasi_store::Error> {
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        let page = store.keys_page(cursor.as_deref(), KEYS_PAGE).await.map_err(to_wasi)?;
        Ok(wasi_store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    async fn drop(&mut self, bucket: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table_mut().delete(bucket)?;
        Ok(())
    }
}

impl wasi_atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        delta: i64,
    ) -> Result<i64, wasi_store::Error> {
        check_key(&key).map_err(to_wasi)?;
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        store.increment(&key, delta).await.map_err(to_wasi)
    }

    async fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> Result<(), wasi_atomics::CasError> {
        let handle = self
            .table_mut()
            .delete(cas)
            .map_err(|err| wasi_atomics::CasError::StoreError(wasi_store::Error::Other(err.to_string())))?;
        check_value(&value).map_err(|err| wasi_atomics::CasError::StoreError(to_wasi(err)))?;
        let swapped = handle
            .store
            .compare_and_swap(&handle.key, handle.seen.as_deref(), &value)
            .await
            .map_err(|err| wasi_atomics::CasError::StoreError(to_wasi(err)))?;
        if swapped {
            return Ok(());
        }
        // Hand the guest a fresh handle on the current value so it can retry.
        let seen = handle
            .store
            .get(&handle.key)
            .await
            .map_err(|err| wasi_atomics::CasError::StoreError(to_wasi(err)))?;
        let retry = CasHandle {
            store: handle.store,
            key: handle.key,
            seen,
        };
        let retry = self
            .table_mut()
            .push(retry)
            .map_err(|err| wasi_atomics::CasError::StoreError(wasi_store::Error::Other(err.to_string())))?;
        Err(wasi_atomics::CasError::CasFailed(retry))
    }
}

impl wasi_atomics::HostCas for KeyValueView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> Result<Resource<CasHandle>, wasi_store::Error> {
        check_key(&key).map_err(to_wasi)?;
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        let seen = store.get(&key).await.map_err(to_wasi)?;
        self.table_mut()
            .push(CasHandle { store, key, seen })
            .map_err(|err| wasi_store::Error::Other(err.to_string()))
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, wasi_store::Error> {
        self.table()
            .get(&cas)
            .map(|handle| handle.seen.clone())
            .map_err(|err| wasi_store::Error::Other(err.to_string()))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table_mut().delete(cas)?;
        Ok(())
    }
}

impl wasi_batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, wasi_store::Error> {
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = store.get(&key).await.map_err(to_wasi)?;
            values.push((key, value));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), wasi_store::Error> {
        for (key, value) in &key_values {
            check_key(key).and_then(|_| check_value(value)).map_err(to_wasi)?;
        }
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        for (key, value) in key_values {
            store.set(&key, &value).await.map_err(to_wasi)?;
        }
        Ok(())
    }

    async fn delete_many(&mut self, bucket: Resource<OpenStore>, keys: Vec<String>) -> Result<(), wasi_store::Error> {
        let store = self.store_of(&bucket).map_err(to_wasi)?;
        for key in keys {
            store.delete(&key).await.map_err(to_wasi)?;
        }
        Ok(())
    }
}
