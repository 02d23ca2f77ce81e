//! Mosaic: a WebAssembly component platform for microservices. It serves a Spin application
//! (`spin.toml`) and swaps any one component to a new version while the others keep serving.

pub mod admin;
pub mod app;
pub mod backends;
pub mod bindings;
pub mod build;
pub mod capability;
pub mod client;
pub mod cluster;
pub mod deploy;
pub mod engine;
pub mod guest_log;
pub mod host;
pub mod instance;
pub mod listener;
pub mod observe;
pub mod settings;
pub mod state;
pub mod trigger;
pub mod watch;

pub use host::{Host, HostOptions};
