//! A store whose every operation is a client span under the request an instance serves, when
//! the host exports spans (`observe::Spans`); without export no store is wrapped.

use std::future::Future;
use std::sync::Arc;

use super::{KeyValueStore, KeysPage, KvError};
use crate::observe::{OpenSpan, SpanParent};

pub(super) struct Traced {
    pub store: Arc<dyn KeyValueStore>,
    pub label: String,
    pub backend: &'static str,
    pub parent: SpanParent,
}

impl Traced {
    fn span(&self, operation: &'static str) -> OpenSpan {
        let mut span = self.parent.client(format!("key-value {operation} {}", self.label));
        span.set("db.system.name", self.backend);
        span.set("db.operation.name", operation);
        span.set_str("db.namespace", &self.label);
        span.set("mosaic.capability", "key_value");
        span
    }

    async fn traced<T>(
        &self,
        operation: &'static str,
        run: impl Future<Output = Result<T, KvError>>,
    ) -> Result<T, KvError> {
        let span = self.span(operation);
        span.end_with(run.await, ToString::to_string)
    }
}

#[async_trait::async_trait]
impl KeyValueStore for Traced {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.traced("get", self.store.get(key)).await
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.traced("set", self.store.set(key, value)).await
    }
    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.traced("delete", self.store.delete(key)).await
    }
    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.traced("exists", self.store.exists(key)).await
    }
    async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.traced("get-keys", self.store.keys()).await
    }
    async fn keys_page(&self, cursor: Option<&str>, limit: usize) -> Result<KeysPage, KvError> {
        self.traced("list-keys", self.store.keys_page(cursor, limit)).await
    }
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.traced("increment", self.store.increment(key, delta)).await
    }
    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, KvError> {
        self.traced("compare-and-swap", self.store.compare_and_swap(key, expected, new))
            .await
    }
}
