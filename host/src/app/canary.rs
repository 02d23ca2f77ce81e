//! A canary: a second version of a component that takes a share of its new requests (and
//! message deliveries) while the stable version keeps the rest, and the numbers that decide
//! whether it is promoted or rolled back. This module holds the split and the judgement; the
//! pipeline (`deploy::canary`) starts, steps, promotes and ends canaries.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Deployment;

/// Shares are in basis points: 10,000 is every request.
pub const ALL: u32 = 10_000;

/// How a canary is judged and raised. Defaults: a canary fails when more than 5% of its
/// requests over the last 60 s failed (with at least 20 of them), or, where the stable version
/// had at least as many, when its rate is more than 5 points above the stable one's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryPolicy {
    /// The share of new requests the canary takes at first, in percent (0 < p <= 100).
    pub percent: f64,
    /// A header whose value keeps a client on one version (`x-user-id`, `cookie`).
    #[serde(default)]
    pub sticky: Option<String>,
    /// The error rate (0..1) above which the canary is rolled back.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Requests (or deliveries) the canary must have had in the window before it is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// The sliding window the rates are counted over.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Promote a canary that stayed healthy this long (after its last step).
    #[serde(default)]
    pub promote_after_ms: Option<u64>,
    /// Shares to raise the canary to, in order, in percent (`5,25,50,100`); reaching 100
    /// promotes it.
    #[serde(default)]
    pub steps: Vec<f64>,
    /// The time between steps.
    #[serde(default)]
    pub step_every_ms: Option<u64>,
}

fn default_max_error_rate() -> f64 {
    0.05
}
fn default_min_requests() -> u64 {
    20
}
fn default_window_ms() -> u64 {
    60_000
}

impl CanaryPolicy {
    pub fn new(percent: f64) -> Self {
        Self {
            percent,
            sticky: None,
            max_error_rate: default_max_error_rate(),
            min_requests: default_min_requests(),
            window_ms: default_window_ms(),
            promote_after_ms: None,
            steps: Vec::new(),
            step_every_ms: None,
        }
    }

    /// Refuses a policy that cannot work, naming the setting.
    pub fn check(&self) -> Result<(), String> {
        let share = |what: &str, percent: f64| {
            if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
                Ok(())
            } else {
                Err(format!(
                    "{what} must be a percentage above 0 and at most 100 (found {percent})"
                ))
            }
        };
        share("--canary", self.percent)?;
        for step in &self.steps {
            share("each of --steps", *step)?;
        }
        if self.steps.windows(2).any(|pair| pair[1] <= pair[0]) || self.steps.first().is_some_and(|f| *f < self.percent)
        {
            return Err(format!(
                "--steps must rise from the --canary share ({}): found {:?}",
                self.percent, self.steps
            ));
        }
        if !self.steps.is_empty() && self.step_every_ms.is_none() {
            return Err("--steps needs --step-every DURATION (the time between steps)".into());
        }
        if !(self.max_error_rate.is_finite() && (0.0..=1.0).contains(&self.max_error_rate)) {
            return Err(format!(
                "--max-error-rate must be between 0 and 1, e.g. 0.05 for 5% (found {})",
                self.max_error_rate
            ));
        }
        if self.min_requests == 0 {
            return Err("--min-requests must be at least 1".into());
        }
        if self.window_ms < 1_000 {
            return Err("the error-rate window must be at least 1 s".into());
        }
        if let Some(sticky) = &self.sticky {
            http::HeaderName::from_bytes(sticky.as_bytes())
                .map_err(|_| format!("--sticky `{sticky}` is not a header name"))?;
        }
        Ok(())
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

impl CanaryPolicy {
    /// The admin API's query parameters of the policy (`canary`, `sticky`, ...), unencoded.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("canary", self.percent.to_string()),
            ("max_error_rate", self.max_error_rate.to_string()),
            ("min_requests", self.min_requests.to_string()),
            ("window_ms", self.window_ms.to_string()),
        ];
        if let Some(sticky) = &self.sticky {
            pairs.push(("sticky", sticky.clone()));
        }
        if let Some(after) = self.promote_after_ms {
            pairs.push(("promote_after_ms", after.to_string()));
        }
        if !self.steps.is_empty() {
            let steps: Vec<String> = self.steps.iter().map(f64::to_string).collect();
            pairs.push(("steps", steps.join(",")));
        }
        if let Some(every) = self.step_every_ms {
            pairs.push(("step_every_ms", every.to_string()));
        }
        pairs
    }

    /// The policy of a deploy's query, if it asks for a canary (`canary=PERCENT`); `value`
    /// looks up a (decoded) query value. Errors name the parameter.
    pub fn from_query(value: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let Some(percent) = value("canary") else {
            return Ok(None);
        };
        fn number<T: std::str::FromStr>(key: &str, text: &str) -> Result<T, String> {
            text.trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("`{key}={text}` is not a number"))
        }
        let mut policy = CanaryPolicy::new(number("canary", &percent)?);
        policy.sticky = value("sticky").filter(|sticky| !sticky.is_empty());
        if let Some(rate) = value("max_error_rate") {
            policy.max_error_rate = number("max_error_rate", &rate)?;
        }
        if let Some(min) = value("min_requests") {
            policy.min_requests = number("min_requests", &min)?;
        }
        if let Some(window) = value("window_ms") {
            policy.window_ms = number("window_ms", &window)?;
        }
        if let Some(after) = value("promote_after_ms") {
            policy.promote_after_ms = Some(number("promote_after_ms", &after)?);
        }
        if let Some(steps) = value("steps") {
            policy.steps = steps
                .split(',')
                .filter(|step| !step.trim().is_empty())
                .map(|step| number("steps", step))
                .collect::<Result<_, _>>()?;
        }
        if let Some(every) = value("step_every_ms") {
            policy.step_every_ms = Some(number("step_every_ms", &every)?);
        }
        policy.check()?;
        Ok(Some(policy))
    }
}

/// A duration as the CLI takes it: `250ms`, `30s`, `5m`, `2h`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 500ms, 30s, 5m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{text}`: unknown unit `{other}`; use ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Percent to basis points.
pub fn basis_points(percent: f64) -> u32 {
    ((percent * 100.0).round() as u32).min(ALL)
}

/// Which version served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Stable,
    Canary,
}

/// Requests and failures of one version in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

impl Counts {
    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
        }
    }

    pub fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Outcomes per second, for both versions, over a sliding window.
struct OutcomeWindow {
    window: Duration,
    started: Instant,
    /// (second since `started`, stable, canary), oldest first.
    buckets: Mutex<VecDeque<(u64, Counts, Counts)>>,
}

impl OutcomeWindow {
    fn new(window: Duration) -> Self {
        Self {
            window,
            started: Instant::now(),
            buckets: Mutex::new(VecDeque::new()),
        }
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs()
    }

    fn record(&self, arm: Arm, failed: bool, at: Instant) {
        let second = self.second(at);
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.back().is_none_or(|(last, _, _)| *last != second) {
            buckets.push_back((second, Counts::default(), Counts::default()));
        }
        let keep = self.window.as_secs().max(1);
        while buckets.front().is_some_and(|(first, _, _)| first + keep <= second) {
            buckets.pop_front();
        }
        if let Some((_, stable, canary)) = buckets.back_mut() {
            let counts = match arm {
                Arm::Stable => stable,
                Arm::Canary => canary,
            };
            counts.requests += 1;
            counts.errors += u64::from(failed);
        }
    }

    /// (stable, canary) over the window that ends at `at`.
    fn totals(&self, at: Instant) -> (Counts, Counts) {
        let now = self.second(at);
        let keep = self.window.as_secs().max(1);
        let buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut totals = (Counts::default(), Counts::default());
        for (second, stable, canary) in buckets.iter() {
            if second + keep > now {
                totals.0.requests += stable.requests;
                totals.0.errors += stable.errors;
                totals.1.requests += canary.requests;
                totals.1.errors += canary.errors;
            }
        }
        totals
    }
}

/// A canary in progress on one component.
pub struct Canary {
    pub deployment: Arc<Deployment>,
    pub policy: CanaryPolicy,
    sticky: Option<http::HeaderName>,
    share: AtomicU32,
    /// The step reached (0: the first share, before any of `policy.steps`).
    step: AtomicU32,
    window: OutcomeWindow,
    pub started_at_unix_ms: u64,
    /// When the share last changed: `promote_after` and `step_every` count from here.
    last_change: Mutex<Instant>,
    /// Woken when an outcome makes the canary fail, so that its supervisor ends it at once.
    pub failed: tokio::sync::Notify,
    /// In cluster mode, the other hosts' (stable, canary) counts in their windows, as the
    /// cluster store last had them: every host's outcomes decide.
    peers: Mutex<(Counts, Counts)>,
}

impl Canary {
    pub fn new(deployment: Arc<Deployment>, policy: CanaryPolicy, share_bp: u32, step: u32) -> Self {
        let sticky = policy
            .sticky
            .as_deref()
            .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok());
        Self {
            deployment,
            window: OutcomeWindow::new(policy.window()),
            policy,
            sticky,
            share: AtomicU32::new(share_bp.min(ALL)),
            step: AtomicU32::new(step),
            started_at_unix_ms: crate::clock::now_unix_ms(),
            last_change: Mutex::new(Instant::now()),
            failed: tokio::sync::Notify::new(),
            peers: Mutex::default(),
        }
    }

    /// The canary's share now, in basis points.
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Relaxed)
    }

    pub fn step(&self) -> u32 {
        self.step.load(Ordering::Relaxed)
    }

    /// Raises the share to step `step` of the policy (`basis_points` of it).
    pub fn set_share(&self, share_bp: u32, step: u32) {
        self.share.store(share_bp.min(ALL), Ordering::Relaxed);
        self.step.store(step, Ordering::Relaxed);
        *self.last_change.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
    }

    /// How long the share has been what it is.
    pub fn since_last_change(&self) -> Duration {
        self.last_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .elapsed()
    }

    /// The header that keeps a client on one version, if the canary is sticky.
    pub fn sticky_header(&self) -> Option<&http::HeaderName> {
        self.sticky.as_ref()
    }

    /// Whether a new request goes to the canary. With a sticky value, the same value always
    /// lands in the same of 10,000 buckets, and the canary takes the lowest `share` of them, so
    /// a client on the canary stays there as the share rises; without one, it is a weighted
    /// coin.
    pub fn takes(&self, sticky_value: Option<&[u8]>) -> bool {
        let share = self.share();
        if share >= ALL {
            return true;
        }
        let bucket = match sticky_value {
            Some(value) => bucket_of(value),
            None => rand::random_range(0..ALL),
        };
        bucket < share
    }

    /// Counts one outcome. A failure of the canary that crosses its limit takes it out of the
    /// split at once (share 0: no new request reaches it) and wakes its supervisor, which ends
    /// it; nothing waits for the next look.
    pub fn record(&self, arm: Arm, failed: bool) {
        self.window.record(arm, failed, Instant::now());
        if failed && arm == Arm::Canary && self.failing().is_some() {
            self.withdraw();
            self.failed.notify_one();
        }
    }

    /// (stable, canary) requests and failures in the window, of every host that runs the
    /// canary: what it is judged on.
    pub fn counts(&self) -> (Counts, Counts) {
        let (stable, canary) = self.local_counts();
        let (peer_stable, peer_canary) = *self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (stable.plus(peer_stable), canary.plus(peer_canary))
    }

    /// (stable, canary) requests and failures in the window on this host.
    pub fn local_counts(&self) -> (Counts, Counts) {
        self.window.totals(Instant::now())
    }

    /// The other hosts' counts (cluster mode), added to this host's when the canary is judged.
    pub fn set_peer_counts(&self, stable: Counts, canary: Counts) {
        *self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = (stable, canary);
    }

    /// Takes the canary out of the split (no new request reaches it) until it is ended.
    pub fn withdraw(&self) {
        self.share.store(0, Ordering::Relaxed);
    }

    /// Why the canary must be rolled back now, if it must.
    pub fn failing(&self) -> Option<String> {
        let (stable, canary) = self.counts();
        judge(&self.policy, stable, canary)
    }
}

/// The bucket (0..10,000) of a sticky value: a fixed hash (SipHash with zero keys), the same in
/// every host and after a restart.
fn bucket_of(value: &[u8]) -> u32 {
    #[allow(deprecated)] // SipHasher: stable across processes, which DefaultHasher::new() does not promise
    let mut hasher = std::hash::SipHasher::new();
    value.hash(&mut hasher);
    (hasher.finish() % u64::from(ALL)) as u32
}

/// The canary fails when it has had `min_requests` in the window and its error rate is above
/// the limit: `max_error_rate`, or, where the stable version had `min_requests` too, the stable
/// rate plus `max_error_rate` (so a backend that fails both does not blame the canary).
pub fn judge(policy: &CanaryPolicy, stable: Counts, canary: Counts) -> Option<String> {
    if canary.requests < policy.min_requests {
        return None;
    }
    let relative = stable.requests >= policy.min_requests;
    let limit = if relative {
        stable.rate() + policy.max_error_rate
    } else {
        policy.max_error_rate
    };
    if canary.rate() <= limit {
        return None;
    }
    let window = policy.window_ms as f64 / 1000.0;
    let against = if relative {
        format!(
            "the stable version: {} of {} ({:.1}%), the limit {:.1}%",
            stable.errors,
            stable.requests,
            stable.rate() * 100.0,
            limit * 100.0
        )
    } else {
        format!("the limit {:.1}%", limit * 100.0)
    };
    Some(format!(
        "auto-rollback: {} of {} requests failed ({:.1}% in the last {window:.0} s; {against})",
        canary.errors,
        canary.requests,
        canary.rate() * 100.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64) -> Counts {
        Counts { requests, errors }
    }

    #[test]
    fn judged_only_with_enough_requests_and_relative_to_a_busy_stable() {
        let policy = CanaryPolicy::new(10.0);
        assert_eq!(judge(&policy, counts(0, 0), counts(19, 19)), None, "below min_requests");
        let reason = judge(&policy, counts(0, 0), counts(40, 37)).expect("fails");
        assert!(
            reason.starts_with("auto-rollback: 37 of 40 requests failed"),
            "{reason}"
        );
        assert_eq!(
            judge(&policy, counts(0, 0), counts(40, 2)),
            None,
            "5% is within the limit"
        );
        // A stable version failing as much (a backend down) does not blame the canary.
        assert_eq!(judge(&policy, counts(400, 200), counts(40, 21)), None);
        let reason = judge(&policy, counts(400, 0), counts(40, 4)).expect("10% against 0%");
        assert!(reason.contains("the stable version: 0 of 400"), "{reason}");
    }

    #[test]
    fn a_sticky_value_stays_on_its_version_as_the_share_rises() {
        let values: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let share_of = |bp: u32| values.iter().filter(|v| bucket_of(v.as_bytes()) < bp).count();
        let at_10 = share_of(1000);
        assert!((120..=280).contains(&at_10), "about 10% of 2000: {at_10}");
        for value in &values {
            let bucket = bucket_of(value.as_bytes());
            assert_eq!(bucket, bucket_of(value.as_bytes()), "the same bucket every time");
            if bucket < 1000 {
                assert!(bucket < 5000, "on the canary at 10% means on it at 50%");
            }
        }
    }

    #[test]
    fn the_window_forgets_what_is_older_than_it() {
        let window = OutcomeWindow::new(Duration::from_secs(10));
        let t0 = window.started;
        window.record(Arm::Canary, true, t0);
        window.record(Arm::Stable, false, t0 + Duration::from_secs(5));
        assert_eq!(window.totals(t0 + Duration::from_secs(9)), (counts(1, 0), counts(1, 1)));
        assert_eq!(
            window.totals(t0 + Duration::from_secs(12)),
            (counts(1, 0), counts(0, 0))
        );
        window.record(Arm::Canary, false, t0 + Duration::from_secs(30));
        assert_eq!(
            window.totals(t0 + Duration::from_secs(30)),
            (counts(0, 0), counts(1, 0))
        );
    }

    #[test]
    fn a_policy_goes_through_the_query_and_back() {
        let mut policy = CanaryPolicy::new(12.5);
        policy.sticky = Some("x-user-id".into());
        policy.promote_after_ms = Some(30_000);
        policy.steps = vec![25.0, 50.0, 100.0];
        policy.step_every_ms = Some(1_000);
        let pairs = policy.query_pairs();
        let value = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        assert_eq!(CanaryPolicy::from_query(value), Ok(Some(policy)));
        assert_eq!(CanaryPolicy::from_query(|_| None), Ok(None));
        let err = CanaryPolicy::from_query(|key| (key == "canary").then(|| "lots".to_string())).unwrap_err();
        assert!(err.contains("`canary=lots`"), "{err}");
    }

    #[test]
    fn durations_read_as_an_operator_writes_them() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn bad_policies_are_named() {
        let mut policy = CanaryPolicy::new(0.0);
        assert!(policy.check().unwrap_err().contains("--canary"));
        policy.percent = 10.0;
        policy.steps = vec![25.0, 20.0];
        policy.step_every_ms = Some(1000);
        assert!(policy.check().unwrap_err().contains("--steps must rise"));
        policy.steps = vec![25.0, 50.0, 100.0];
        policy.step_every_ms = None;
        assert!(policy.check().unwrap_err().contains("--step-every"));
        policy.step_every_ms = Some(1000);
        policy.max_error_rate = 5.0;
        assert!(policy.check().unwrap_err().contains("--max-error-rate"));
        policy.max_error_rate = 0.05;
        policy.sticky = Some("bad header".into());
        assert!(policy.check().unwrap_err().contains("--sticky"));
        policy.sticky = Some("x-user-id".into());
        assert_eq!(policy.check(), Ok(()));
    }
}
