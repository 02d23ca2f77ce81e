//! The one wasmtime `Engine` of a host: component model, async, epoch interruption, and a
//! pooling allocator sized by the limits. Also the epoch ticker that drives request deadlines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::settings::Limits;

/// How often the epoch advances. A guest running pure computation yields to the async
/// executor every tick, and its deadline is checked at that moment.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub fn build_engine(limits: &Limits) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // WASI 0.3 components (spin-sdk 7, Spin's Python SDK 5) use component-model async:
    // `stream`, `future` and async functions.
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);

    let instances = limits.max_concurrent_instances;
    let mut pooling = PoolingAllocationConfig::default();
    pooling.total_component_instances(instances);
    // A Rust component has one core instance for the program plus a few adapter shims.
    pooling.total_core_instances(instances.saturating_mul(8));
    pooling.total_memories(instances.saturating_mul(2));
    pooling.total_tables(instances.saturating_mul(4));
    pooling.total_stacks(instances);
    pooling.max_memory_size(limits.instance_memory_bytes() as usize);
    let keep_resident = limits.instance_keep_resident_bytes();
    if keep_resident > 0 {
        // Measured with `cargo xtask bench cluster` (1 host, 32 connections, 2 cores): 5895
        // requests/s with every finished slot returned to the kernel (madvise), 12783 with
        // this; host CPU per request 272 µs (137 in the kernel) against 107 (23). The kernel
        // time was cross-core TLB shootdowns from the madvise of each slot.
        pooling.linear_memory_keep_resident(keep_resident);
        pooling.table_keep_resident(keep_resident.min(64 << 10));
        // Only the pages an instance dirtied are reset (Linux 6.7+; otherwise the low
        // `keep_resident` bytes are).
        pooling.pagemap_scan(wasmtime::Enabled::Auto);
        pooling.decommit_batch_size(64);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

    Engine::new(&config).map_err(|err| {
        anyhow::anyhow!(
            "cannot create the wasmtime engine with a pool of {instances} instances of \
             {} MiB: {err:#}. Lower `limits.max_concurrent_instances` or \
             `limits.instance_memory_mb` in mosaic.toml",
            limits.instance_memory_mb
        )
    })
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let stop_flag = stop.clone();
        std::thread::Builder::new()
            .name("mosaic-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("the OS refused a thread for the epoch ticker");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_build_with_and_without_resident_slots() {
        for keep_resident_kb in [0, 1024, u64::MAX] {
            let limits = Limits {
                max_concurrent_instances: 4,
                instance_keep_resident_kb: keep_resident_kb,
                ..Limits::default()
            };
            assert!(limits.instance_keep_resident_bytes() <= limits.instance_memory_bytes() as usize);
            build_engine(&limits).unwrap_or_else(|err| panic!("keep_resident_kb = {keep_resident_kb}: {err}"));
        }
    }
}
