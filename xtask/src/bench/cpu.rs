use std::time::Instant;

use anyhow::{Context, Result};

/// CPU time so far, in clock ticks of /proc (USER_HZ, 100 a second on Linux): user and kernel
/// time of some processes, this process's (the load generator's) total, and the machine's idle
/// and total time over all cores.
pub(super) struct CpuSnapshot {
    hosts_user: u64,
    hosts_kernel: u64,
    generator: u64,
    machine_idle: u64,
    machine_total: u64,
}

/// Ticks of /proc/stat and /proc/PID/stat a second.
pub(super) const USER_HZ: f64 = 100.0;

pub(super) fn cpu_snapshot(pids: &[u32]) -> Result<CpuSnapshot> {
    // utime and stime, the 14th and 15th fields; after the command name in parentheses.
    let times = |stat: &str| -> Result<(u64, u64)> {
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("unexpected /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        let field = |i: usize| -> Result<u64> { Ok(fields.get(i).context("short /proc/PID/stat")?.parse()?) };
        Ok((field(11)?, field(12)?))
    };
    let (mut hosts_user, mut hosts_kernel) = (0, 0);
    for pid in pids {
        let (user, kernel) = times(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
        hosts_user += user;
        hosts_kernel += kernel;
    }
    let (user, kernel) = times(&std::fs::read_to_string("/proc/self/stat")?)?;
    // `cpu user nice system idle iowait irq softirq steal ...` (guest time is within user).
    let machine = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = machine
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("unexpected /proc/stat")?
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok(CpuSnapshot {
        hosts_user,
        hosts_kernel,
        generator: user + kernel,
        machine_idle: ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0),
        machine_total: ticks.iter().sum(),
    })
}

/// The CPU used between two snapshots: in cores (CPU seconds per second), and per request.
pub(super) struct CpuUse {
    pub(super) hosts_cores: f64,
    pub(super) hosts_kernel_cores: f64,
    pub(super) generator_cores: f64,
    /// What the rest of the machine used: busy time minus the hosts' and the generator's.
    pub(super) others_cores: f64,
    /// Fraction of the machine's time (all cores) that was idle.
    pub(super) idle: f64,
    pub(super) host_us_per_request: f64,
    pub(super) host_kernel_us_per_request: f64,
}

impl CpuUse {
    /// The figures a row shows, formatted once for the progress line and the table alike: the
    /// hosts' CPU and its kernel part, the load generator's and the other processes' (cores), the
    /// machine's idle time (%), the hosts' CPU per request and its kernel part (µs).
    pub(super) fn figures(&self) -> [String; 7] {
        [
            format!("{:.2}", self.hosts_cores),
            format!("{:.2}", self.hosts_kernel_cores),
            format!("{:.2}", self.generator_cores),
            format!("{:.2}", self.others_cores),
            format!("{:.0}", self.idle * 100.0),
            format!("{:.0}", self.host_us_per_request),
            format!("{:.0}", self.host_kernel_us_per_request),
        ]
    }

    pub(super) fn between(before: &(Instant, CpuSnapshot), after: &(Instant, CpuSnapshot), requests: u64) -> CpuUse {
        let ((start, a), (end, b)) = (before, after);
        let seconds = end.duration_since(*start).as_secs_f64().max(1e-6);
        let cores = |ticks: u64| ticks as f64 / USER_HZ / seconds;
        let per_request = |ticks: u64| ticks as f64 / USER_HZ * 1e6 / requests.max(1) as f64;
        let hosts = (b.hosts_user + b.hosts_kernel).saturating_sub(a.hosts_user + a.hosts_kernel);
        let kernel = b.hosts_kernel.saturating_sub(a.hosts_kernel);
        let generator = b.generator.saturating_sub(a.generator);
        let total = b.machine_total.saturating_sub(a.machine_total);
        let busy = total.saturating_sub(b.machine_idle.saturating_sub(a.machine_idle));
        CpuUse {
            hosts_cores: cores(hosts),
            hosts_kernel_cores: cores(kernel),
            generator_cores: cores(generator),
            others_cores: (cores(busy) - cores(hosts) - cores(generator)).max(0.0),
            idle: 1.0 - busy as f64 / total.max(1) as f64,
            host_us_per_request: per_request(hosts),
            host_kernel_us_per_request: per_request(kernel),
        }
    }
}
