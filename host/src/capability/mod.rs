//! What a guest imports from the host, one module per capability, each behind its own seam.

pub mod http_outbound;
pub mod key_value;
pub mod messaging;
pub mod postgres;
pub mod redis_client;
pub mod sqlite;
pub mod unsupported;
pub mod variables;
