//! The parsers of everything an application author writes in `spin.toml`: the manifest itself
//! ([`manifest`]) and its component dependencies ([`dependencies`]), HTTP route patterns and the router ([`routes`]), `allowed_outbound_hosts`
//! ([`allowed_hosts`]), message channel names and patterns ([`topics`]) and `{{ variable }}`
//! templates ([`template`]).
//!
//! A crate of its own, free of wasmtime and the backends, so that `fuzz/` can build and fuzz it
//! in seconds; the host re-exports each module where it used to live (`mosaic::app::manifest`,
//! `mosaic::app::routes`, `mosaic::capability::http_outbound`, `mosaic::capability::messaging`).
//! None of them may panic on any input.

pub mod allowed_hosts;
pub mod dependencies;
pub mod manifest;
pub mod routes;
pub mod template;
pub mod topics;
