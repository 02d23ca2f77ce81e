//! The operator's dashboard at `/ui`: a page and its script, served by the admin listener
//! itself (nothing from a CDN or anywhere else; its Content-Security-Policy allows only this
//! origin), and the request history the page draws its charts from.
//!
//! The page asks for the admin token once and keeps it in the browser session
//! (`sessionStorage`); everything it shows comes from the admin API with that token, and its
//! rollback and promote buttons are the API's `POST /v1/components/NAME/rollback|promote`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::app::App;

/// How often the request counters are sampled for the charts.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// How many samples are kept: 5 minutes at one every 2 seconds.
const SAMPLES_KEPT: usize = 150;

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");

/// Only this origin: no script, style, image or connection elsewhere.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One sample of every component's cumulative counters.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    at_unix_ms: u64,
    /// component → (requests, errors, in flight), requests and errors since the host started.
    components: BTreeMap<String, (u64, u64, u64)>,
}

/// The last minutes of every component's request and error counters.
#[derive(Default)]
pub struct RequestHistory {
    samples: Mutex<VecDeque<Sample>>,
}

/// `GET /v1/series`: per component, `[at_unix_ms, requests, errors, in_flight]` rows, oldest
/// first; a rate is the difference of two rows over their time apart.
#[derive(Debug, Serialize)]
pub struct Series {
    pub interval_ms: u64,
    pub components: BTreeMap<String, Vec<[u64; 4]>>,
}

impl RequestHistory {
    /// Takes one sample of `app`'s counters now.
    pub fn sample(&self, app: &App) {
        let components = app
            .slots()
            .iter()
            .map(|slot| {
                let stats = &slot.stats;
                let in_flight = slot.live.load().in_flight()
                    + slot
                        .canary
                        .load_full()
                        .map_or(0, |canary| canary.deployment.in_flight());
                (
                    slot.spec.name.clone(),
                    (
                        stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                        stats.errors.load(std::sync::atomic::Ordering::Relaxed),
                        in_flight,
                    ),
                )
            })
            .collect();
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(Sample {
            at_unix_ms: crate::clock::now_unix_ms(),
            components,
        });
    }

    pub fn series(&self) -> Series {
        let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut components: BTreeMap<String, Vec<[u64; 4]>> = BTreeMap::new();
        for sample in samples.iter() {
            for (name, (requests, errors, in_flight)) in &sample.components {
                components
                    .entry(name.clone())
                    .or_default()
                    .push([sample.at_unix_ms, *requests, *errors, *in_flight]);
            }
        }
        Series {
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            components,
        }
    }
}

/// Samples `app` every [`SAMPLE_INTERVAL`] until `stop` turns true.
pub async fn run_sampler(
    app: std::sync::Arc<App>,
    history: std::sync::Arc<RequestHistory>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => history.sample(&app),
            _ = crate::stop::stopped(&mut stop) => return,
        }
    }
}

/// The page (`/ui`) or its script (`/ui/dashboard.js`); `None` for another path under `/ui`.
pub fn asset(segments: &[&str]) -> Option<crate::trigger::http::HttpResponse> {
    let (body, content_type) = match segments {
        ["ui"] | ["ui", ""] | ["ui", "index.html"] => (PAGE, "text/html; charset=utf-8"),
        ["ui", "dashboard.js"] => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut response = hyper::Response::new(crate::trigger::body::full(body.as_bytes().to_vec()));
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    Some(response)
}
