//! The circuit breaker of one outbound destination, shared by every instance of the app.
//!
//! Closed: requests pass; `failures` failures in a row, all within `window`, open the circuit.
//! Open: every request is refused at once (a [`Rejection`]) for `open_for`. Half-open: then
//! one trial request goes through (the others are still refused); its success closes the
//! circuit, its failure opens it again for `open_for`.
//!
//! A success in the closed state clears the count, so a busy destination that fails now and
//! then never opens; a dead one opens after `failures` requests. The caller passes the time in
//! (`now`), so the state machine is tested without sleeping.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit (at least 1).
    pub failures: u32,
    /// The failures counted are those of the last `window`.
    pub window: Duration,
    /// How long the circuit stays open before a trial request.
    pub open_for: Duration,
}

/// How an attempt ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The destination answered (any status but 502, 503, 504).
    Success,
    /// A connect error, a timeout, a broken connection or a 502/503/504.
    Failure,
    /// Says nothing about the destination (the request itself was refused before it left).
    Neutral,
}

/// A change of state worth a log line and a gauge update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open, after this many failures in a row.
    Opened { failures: u32, until: Instant },
    /// Half-open → open: the trial request failed.
    Reopened { until: Instant },
    /// Half-open → closed: the trial request succeeded.
    Closed,
}

/// Why the circuit refused a request: the text the guest gets in its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub destination: String,
    /// Failures counted since the circuit last closed.
    pub failures: u32,
    pub window: Duration,
    /// When the next trial request goes through; `None` while one is in flight.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "circuit open for {}: {} failures in a row within {}ms; ",
            self.destination,
            self.failures,
            self.window.as_millis()
        )?;
        match self.retry_after {
            Some(wait) => write!(f, "the next trial request goes through in {}ms", wait.as_millis()),
            None => write!(f, "a trial request is in flight"),
        }
    }
}

#[derive(Debug)]
enum State {
    /// The instants of the failures in a row so far (only those within the window).
    Closed {
        failures: VecDeque<Instant>,
    },
    Open {
        until: Instant,
        failures: u32,
    },
    HalfOpen {
        probing: bool,
        failures: u32,
    },
}

#[derive(Debug)]
pub struct Breaker {
    destination: String,
    config: BreakerConfig,
    state: Mutex<State>,
}

/// Leave to send one attempt. Settle it with the attempt's verdict; a trial permit dropped
/// unsettled (the guest gave up) lets the next request be the trial.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Breaker {
    pub fn new(destination: &str, config: BreakerConfig) -> Arc<Self> {
        Arc::new(Self {
            destination: destination.to_string(),
            config: BreakerConfig {
                failures: config.failures.max(1),
                ..config
            },
            state: Mutex::new(State::Closed {
                failures: VecDeque::new(),
            }),
        })
    }

    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets an attempt through, or refuses it at once while the circuit is open.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Permit, Rejection> {
        let mut state = self.lock();
        let reject = |failures: u32, retry_after: Option<Duration>| Rejection {
            destination: self.destination.clone(),
            failures,
            window: self.config.window,
            retry_after,
        };
        let probe = match &mut *state {
            State::Closed { .. } => false,
            State::Open { until, failures } if now < *until => {
                return Err(reject(*failures, Some(*until - now)));
            }
            State::Open { failures, .. } => {
                *state = State::HalfOpen {
                    probing: true,
                    failures: *failures,
                };
                true
            }
            State::HalfOpen {
                probing: true,
                failures,
            } => return Err(reject(*failures, None)),
            State::HalfOpen { probing, .. } => {
                *probing = true;
                true
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            settled: false,
        })
    }

    fn settle(&self, probe: bool, verdict: Verdict, now: Instant) -> Option<Transition> {
        let config = self.config;
        let mut state = self.lock();
        match (&mut *state, probe, verdict) {
            (State::Closed { failures }, _, Verdict::Success) => {
                failures.clear();
                None
            }
            (State::Closed { failures }, _, Verdict::Failure) => {
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|first| now.saturating_duration_since(*first) > config.window)
                {
                    failures.pop_front();
                }
                let count = failures.len() as u32;
                if count < config.failures {
                    return None;
                }
                let until = now + config.open_for;
                *state = State::Open { until, failures: count };
                Some(Transition::Opened { failures: count, until })
            }
            (State::HalfOpen { probing: true, .. }, true, Verdict::Success) => {
                *state = State::Closed {
                    failures: VecDeque::new(),
                };
                Some(Transition::Closed)
            }
            (
                State::HalfOpen {
                    probing: true,
                    failures,
                },
                true,
                Verdict::Failure,
            ) => {
                let until = now + config.open_for;
                *state = State::Open {
                    until,
                    failures: failures.saturating_add(1),
                };
                Some(Transition::Reopened { until })
            }
            (State::HalfOpen { probing, .. }, true, Verdict::Neutral) => {
                *probing = false;
                None
            }
            // An attempt let through before the circuit opened, ending now: it changes nothing.
            _ => None,
        }
    }

    fn release_probe(&self) {
        if let State::HalfOpen { probing, .. } = &mut *self.lock() {
            *probing = false;
        }
    }

    /// Closed with no failure counted: the breaker may be forgotten without losing anything.
    pub fn is_idle(&self) -> bool {
        matches!(&*self.lock(), State::Closed { failures } if failures.is_empty())
    }
}

impl Permit {
    /// Whether this attempt is the half-open circuit's trial request.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Tells the breaker how the attempt ended; returns the change of state it caused.
    pub fn settle(mut self, verdict: Verdict, now: Instant) -> Option<Transition> {
        self.settled = true;
        self.breaker.settle(self.probe, verdict, now)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker() -> Arc<Breaker> {
        Breaker::new(
            "users.spin.internal",
            BreakerConfig {
                failures: 3,
                window: 1000 * MS,
                open_for: 500 * MS,
            },
        )
    }

    fn fail(breaker: &Arc<Breaker>, at: Instant) -> Option<Transition> {
        breaker.admit(at).expect("admitted").settle(Verdict::Failure, at)
    }

    #[test]
    fn opens_after_failures_in_a_row_within_the_window() {
        let t0 = Instant::now();
        let b = breaker();
        assert_eq!(fail(&b, t0), None);
        assert_eq!(fail(&b, t0 + 10 * MS), None);
        assert_eq!(
            fail(&b, t0 + 20 * MS),
            Some(Transition::Opened {
                failures: 3,
                until: t0 + 520 * MS
            })
        );
        let rejection = b.admit(t0 + 100 * MS).unwrap_err();
        assert_eq!(rejection.retry_after, Some(420 * MS));
        assert_eq!(
            rejection.to_string(),
            "circuit open for users.spin.internal: 3 failures in a row within 1000ms; \
             the next trial request goes through in 420ms"
        );
    }

    #[test]
    fn a_success_or_the_window_resets_the_count() {
        let t0 = Instant::now();
        let b = breaker();
        fail(&b, t0);
        fail(&b, t0 + MS);
        b.admit(t0 + 2 * MS).unwrap().settle(Verdict::Success, t0 + 2 * MS);
        assert_eq!(fail(&b, t0 + 3 * MS), None);
        assert_eq!(fail(&b, t0 + 4 * MS), None, "the success cleared the two before");
        // The first two of these three are older than the window by the third.
        assert_eq!(fail(&b, t0 + 2000 * MS), None);
        assert!(b.admit(t0 + 2001 * MS).is_ok());
        // Neutral outcomes change nothing.
        b.admit(t0 + 2002 * MS)
            .unwrap()
            .settle(Verdict::Neutral, t0 + 2002 * MS);
        assert_eq!(fail(&b, t0 + 2003 * MS), None);
        assert!(matches!(fail(&b, t0 + 2004 * MS), Some(Transition::Opened { .. })));
    }

    #[test]
    fn half_open_lets_one_trial_through_and_its_success_closes() {
        let t0 = Instant::now();
        let b = breaker();
        for i in 0..3 {
            fail(&b, t0 + i * MS);
        }
        let later = t0 + 600 * MS;
        let trial = b.admit(later).expect("the trial goes through");
        assert!(trial.is_probe());
        let other = b.admit(later).unwrap_err();
        assert_eq!(other.retry_after, None, "one trial at a time");
        assert!(other.to_string().ends_with("a trial request is in flight"));
        assert_eq!(trial.settle(Verdict::Success, later), Some(Transition::Closed));
        assert!(b.is_idle());
        let next = b.admit(later).unwrap();
        assert!(!next.is_probe());
    }

    #[test]
    fn a_failed_trial_opens_again_and_a_dropped_one_frees_the_slot() {
        let t0 = Instant::now();
        let b = breaker();
        for i in 0..3 {
            fail(&b, t0 + i * MS);
        }
        let at = t0 + 600 * MS;
        assert_eq!(
            b.admit(at).unwrap().settle(Verdict::Failure, at),
            Some(Transition::Reopened { until: at + 500 * MS })
        );
        let rejection = b.admit(at + 100 * MS).unwrap_err();
        assert_eq!(rejection.failures, 4);
        assert_eq!(rejection.retry_after, Some(400 * MS));
        // A trial whose guest gave up (dropped unsettled) lets the next request try.
        let at = at + 500 * MS;
        drop(b.admit(at).unwrap());
        let trial = b.admit(at).expect("the slot was freed");
        assert!(trial.is_probe());
        // A neutral trial frees the slot too.
        assert_eq!(trial.settle(Verdict::Neutral, at), None);
        assert!(b.admit(at).unwrap().is_probe());
    }

    #[test]
    fn late_answers_from_before_the_opening_change_nothing() {
        let t0 = Instant::now();
        let b = breaker();
        let early = b.admit(t0).unwrap();
        for i in 0..3 {
            fail(&b, t0 + i * MS);
        }
        assert_eq!(early.settle(Verdict::Success, t0 + 5 * MS), None);
        assert!(b.admit(t0 + 6 * MS).is_err(), "still open");
    }
}
