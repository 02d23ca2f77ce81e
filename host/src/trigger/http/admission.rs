//! Admission: the cap on requests one component serves at once, and the rate-limited
//! warning when it refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The cap on requests one component serves at once (`http.max_in_flight_per_component`):
/// the instance pool is shared, and without a cap one component flooded with slow requests
/// would take every instance, so that its neighbours could only answer 503.
pub struct Admission {
    pub limit: u32,
    per_component: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Per component: when a refusal was last logged, and refusals since then. A flood of
    /// refusals is one warning a second, not a line per request.
    refusals_logged: Mutex<HashMap<String, (Option<std::time::Instant>, u64)>>,
}

impl Admission {
    pub fn new(limit: u32) -> Admission {
        Admission {
            limit,
            per_component: Mutex::default(),
            refusals_logged: Mutex::default(),
        }
    }

    /// Logs a refusal of `component`, at most once a second with the count since the last line.
    pub fn log_refusal(&self, component: &str) {
        let mut logged = self
            .refusals_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        let entry = logged.entry(component.to_string()).or_insert((None, 0));
        entry.1 += 1;
        if entry
            .0
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            tracing::warn!(
                component,
                refused = entry.1,
                limit = self.limit,
                "requests refused with 503: the component is at http.max_in_flight_per_component"
            );
            *entry = (Some(now), 0);
        }
    }

    /// A permit to serve one more request of `component`, held until its instance is gone;
    /// `None` when the component is at its cap.
    pub fn try_enter(&self, component: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut map = self
                .per_component
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match map.get(component) {
                Some(semaphore) => semaphore.clone(),
                None => {
                    let semaphore = Arc::new(Semaphore::new(self.limit as usize));
                    map.insert(component.to_string(), semaphore.clone());
                    semaphore
                }
            }
        };
        semaphore.try_acquire_owned().ok()
    }
}
