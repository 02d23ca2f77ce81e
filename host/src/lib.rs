//! Mosaic: a WebAssembly component platform for microservices. It serves a Spin application
//! (`spin.toml`) and swaps any one component to a new version while the others keep serving.
//!
//! Dependencies point one way (docs/architecture.md): `host` (the composition root) builds the
//! rest; `admin` and `watch` deploy through a `rollout`, which goes to the `cluster` or straight
//! to the `deploy` pipeline; `trigger` dispatches work; both sit on `app` (the running
//! application), which makes instances through `instance`, the one module that knows every
//! `capability`. Below them: `observe`, `settings`, `state`, `backends`, `clock`, `digest`.

pub mod admin;
pub mod app;
pub mod backends;
pub mod build;
pub mod capability;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod compose;
pub mod deploy;
pub mod digest;
pub mod engine;
pub mod guest_log;
pub mod host;
pub mod instance;
pub mod instance_pool;
pub mod listener;
pub mod migrations;
pub mod observe;
pub mod rollout;
pub mod settings;
pub mod state;
pub mod stop;
pub mod trigger;
pub mod watch;

pub use host::{Host, HostOptions, Migrated};
