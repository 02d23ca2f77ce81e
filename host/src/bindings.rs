//! The one place that runs `bindgen!`: host-side bindings of the interfaces in
//! `wit/mosaic.wit` (the vendored Spin WIT). WASI and wasi:http come from wasmtime-wasi.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mosaic:host/capabilities",
});

pub use fermyon::spin2_0_0::variables;
pub use wasi::config::store as config_store;
