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
