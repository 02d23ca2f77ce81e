//! The admin API (loopback, bearer token): deploy, rollback, status, history; plus `/healthz`
//! and `/readyz` without a token.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/components/NAME/deploy[?route=/x/...]` | body: the component file |
//! | POST | `/v1/components/NAME/deploy?canary=PERCENT[&sticky=HEADER][&max_error_rate=R][&min_requests=N][&window_ms=MS][&promote_after_ms=MS][&steps=P,P][&step_every_ms=MS]` | a canary (docs/canary.md) |
//! | POST | `/v1/components/NAME/promote` | the canary becomes the live version |
//! | POST | `/v1/components/NAME/rollback` | during a canary: ends it |
//! | GET | `/v1/status` | |
//! | GET | `/v1/components/NAME/history` | |
//! | GET | `/v1/cluster` | cluster mode: desired versions, every host's versions |
//! | GET | `/v1/history[?limit=N]` | every component's deploy history, newest first |
//! | GET | `/v1/series` | the last minutes of each component's request counters |
//! | GET | `/ui` | the dashboard page (no token: the page asks for it) |
//! | GET | `/v1/dlq[?component=NAME]` | the dead-letter store |
//! | POST | `/v1/dlq/replay[?component=NAME][&ids=ID,ID]` | all (of NAME), or those ids |

pub mod dashboard;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::manifest::HttpRoute;
use crate::app::App;
use crate::capability::messaging::{BrokerError, DeadLetter};
use crate::capability::{bounded_check, Check};
use crate::deploy::journal::{self, JournalEntry};
use crate::deploy::{self, DeployError, DeployRequest};
use crate::listener::ConnectionLimits;
use crate::rollout::Rollout;
use crate::trigger::body::{full, json_error};
use crate::trigger::http::HttpResponse;

#[derive(Debug, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub route: Option<String>,
    pub version: String,
    pub deployed_at_unix_ms: u64,
    pub in_flight: u64,
    pub requests: u64,
    pub errors: u64,
    /// What the live version targets, e.g. `WASI 0.3 (wasi:http/handler@0.3.0)`.
    #[serde(default)]
    pub world: String,
    /// Its reused instances alive now, serving or idle (0: a fresh instance per request).
    #[serde(default)]
    pub instances: usize,
    /// The canary in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// How the last canary ended since the host started (`auto_rollback of VERSION: why`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_canary: Option<String>,
    /// For a component that runs only as a dependency or middleware of others: those it is
    /// composed into (its `version` is what they run; it serves nothing by itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub composed_into: Vec<String>,
}

/// A canary beside the live (stable) version.
#[derive(Debug, Serialize, Deserialize)]
pub struct CanaryStatus {
    pub version: String,
    /// Its share of new requests, in percent; the stable version has the rest.
    pub share_percent: f64,
    pub sticky: Option<String>,
    pub started_at_unix_ms: u64,
    pub in_flight: u64,
    /// Requests (or deliveries) and failures in the error-rate window, per version.
    pub window_seconds: f64,
    pub stable: crate::app::canary::Counts,
    pub canary: crate::app::canary::Counts,
    pub policy: crate::app::canary::CanaryPolicy,
}

/// The answer of `GET /v1/components/NAME/history`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ComponentHistory {
    pub component: String,
    /// The digest serving now; none for a component this host does not have.
    pub current: Option<crate::digest::Digest>,
    /// Its deployments, oldest first.
    pub history: Vec<JournalEntry>,
}

/// The answer of `GET /v1/dlq` and `POST /v1/dlq/replay`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
}

/// The admin API serves operators and the CLI, a handful of connections; the cap only keeps a
/// runaway script from using up the host's file descriptors.
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Serves the admin API until `stop` turns true; then answers the requests in flight (up to
/// the drain deadline, `limits.drain_timeout_ms`) and returns.
pub async fn serve(listener: TcpListener, rollout: Rollout, token: String, stop: watch::Receiver<bool>) {
    let limits = ConnectionLimits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        drain: rollout.app().settings.limits.drain_timeout(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let history = Arc::new(dashboard::RequestHistory::default());
    tokio::spawn(dashboard::run_sampler(
        rollout.app().clone(),
        history.clone(),
        stop.clone(),
    ));
    let service_for = |_client| {
        let rollout = rollout.clone();
        let token = token.clone();
        let history = history.clone();
        hyper::service::service_fn(move |request| {
            let rollout = rollout.clone();
            let token = token.clone();
            let history = history.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&rollout, &token, &history, request).await) }
        })
    };
    crate::listener::serve("admin", listener, builder, service_for, limits, stop).await;
}

fn authorized(token: &str, request: &hyper::Request<hyper::body::Incoming>) -> bool {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison: the token is the only thing guarding deploys.
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Journal entries `GET /v1/history` answers without a `limit`, and at most.
const DEFAULT_HISTORY_LIMIT: usize = 50;
const MAX_HISTORY_LIMIT: usize = 1000;

/// How long a refused request's body is read for before the connection is given up.
const REFUSED_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and drops the body of a request that is refused before its body is needed (up to
/// `limit` bytes and [`REFUSED_BODY_READ_TIMEOUT`], each frame dropped as it comes: nothing is
/// kept for a client that has not authenticated). Answering with the body unread makes hyper
/// close the connection with unread bytes in the socket, and the kernel then resets it: a client
/// still sending its upload (a deploy with a wrong token) sees "connection reset" instead of
/// the 401 that says what to fix.
async fn discard_body(mut body: hyper::body::Incoming, limit: u64) {
    let read = async {
        let mut read: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |data| data.len() as u64);
            if read > limit {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_READ_TIMEOUT, read).await;
}

/// `value` as a JSON answer; a 500 naming the failure if it does not serialise (never a 200
/// with an empty body, which a client would read as a success).
fn json(status: StatusCode, value: &impl Serialize) -> HttpResponse {
    let body = match serde_json::to_vec(value) {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "the admin API could not serialise its answer");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "answer not serialisable",
                format!(
                    "the admin API could not serialise its answer: {err}; this is a bug in Mosaic, please report it"
                ),
            );
        }
    };
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(
    rollout: &Rollout,
    token: &str,
    history: &dashboard::RequestHistory,
    request: hyper::Request<hyper::body::Incoming>,
) -> HttpResponse {
    let app = rollout.app();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => return json(StatusCode::OK, &serde_json::json!({ "status": "alive" })),
        (&Method::GET, ["metrics"]) => {
            let (in_flight, pending) = app.metric_gauges().await;
            let mut response = crate::trigger::http::text(StatusCode::OK, app.metrics.render(&in_flight, &pending));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return response;
        }
        (&Method::GET, ["readyz"]) => return readiness(rollout).await,
        (&Method::GET, ["ui", ..]) => {
            return dashboard::asset(&segments)
                .unwrap_or_else(|| json_error(StatusCode::NOT_FOUND, "not found", format!("no dashboard file {path}")))
        }
        _ => {}
    }
    if !authorized(token, &request) {
        discard_body(request.into_body(), app.settings.limits.max_component_bytes).await;
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` with the token from the state directory's admin-token file",
        );
    }
    let query = request.uri().query().unwrap_or("").to_string();
    match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["v1", "status"]) => json(StatusCode::OK, &status(app)),
        (Method::GET, ["v1", "series"]) => json(StatusCode::OK, &history.series()),
        (Method::GET, ["v1", "history"]) => {
            let limit = match query_value(&query, "limit").map(|text| text.parse::<usize>()) {
                None => DEFAULT_HISTORY_LIMIT,
                Some(Ok(limit)) if limit > 0 => limit.min(MAX_HISTORY_LIMIT),
                Some(_) => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "bad limit",
                        format!("`limit` must be a whole number from 1 to {MAX_HISTORY_LIMIT}"),
                    )
                }
            };
            match journal::read(&app.state.journal_path()) {
                Ok(entries) => {
                    let history: Vec<&JournalEntry> = entries.iter().rev().take(limit).collect();
                    json(StatusCode::OK, &serde_json::json!({ "history": history }))
                }
                Err(err) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "journal unreadable", err.to_string()),
            }
        }
        (Method::GET, ["v1", "components", name, "history"]) => match journal::read(&app.state.journal_path()) {
            Ok(entries) => {
                let history: Vec<_> = journal::history(&entries, name).into_iter().cloned().collect();
                let current = match app.slot(name) {
                    Some(slot) => Some(slot.live.load().digest.clone()),
                    None => app.dependency_version(name).map(|dependency| dependency.digest),
                };
                json(
                    StatusCode::OK,
                    &ComponentHistory {
                        component: name.to_string(),
                        current,
                        history,
                    },
                )
            }
            Err(err) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "journal unreadable", err.to_string()),
        },
        (Method::POST, ["v1", "components", name, "deploy"]) => {
            let name = name.to_string();
            let limit = app.settings.limits.max_component_bytes;
            let body = match Limited::new(request.into_body(), limit as usize).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    let (status, detail) = if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        (StatusCode::PAYLOAD_TOO_LARGE, format!(
                            "deploy of `{name}` failed at step `receive`: the file is over the limit of {limit} bytes (limits.max_component_bytes in mosaic.toml)"
                        ))
                    } else {
                        (
                            StatusCode::BAD_REQUEST,
                            format!("deploy of `{name}` failed at step `receive`: the upload broke off: {err}"),
                        )
                    };
                    return json(
                        status,
                        &serde_json::json!({ "error": "deploy failed", "step": "receive", "detail": detail }),
                    );
                }
            };
            let route = query_value(&query, "route");
            let request = match crate::app::canary::CanaryPolicy::from_query(|key| query_value(&query, key)) {
                Ok(None) => DeployRequest::deploy(&name, Vec::from(body), route),
                Ok(Some(_)) if route.is_some() => {
                    return bad_deploy_request(
                        &name,
                        "a canary needs a live version: drop `route` (or deploy without a canary first)",
                    )
                }
                Ok(Some(policy)) => DeployRequest::canary(&name, Vec::from(body), policy),
                Err(reason) => return bad_deploy_request(&name, &reason),
            };
            deploy_answer(rollout.deploy(request).await)
        }
        (Method::POST, ["v1", "components", name, "promote"]) => deploy_answer(rollout.promote(name).await),
        (Method::POST, ["v1", "components", name, "rollback"]) => deploy_answer(rollout.rollback(name).await),
        (Method::GET, ["v1", "cluster"]) => match rollout.cluster() {
            Some(cluster) => match cluster.status().await {
                Ok(status) => json(StatusCode::OK, &status),
                Err(err) => json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster store unavailable",
                    err.to_string(),
                ),
            },
            None => json_error(
                StatusCode::NOT_FOUND,
                "not in a cluster",
                "this host runs alone; cluster mode is [cluster] postgres in mosaic.toml or `mosaic up --cluster URL`",
            ),
        },
        (Method::GET, ["v1", "dlq"]) => {
            let component = query_value(&query, "component");
            broker_answer(
                app.capabilities()
                    .messaging
                    .broker
                    .dead_letters(component.as_deref())
                    .await,
            )
        }
        (Method::POST, ["v1", "dlq", "replay"]) => {
            let component = query_value(&query, "component");
            let ids: Vec<String> = query_value(&query, "ids")
                .map(|ids| ids.split(',').filter(|id| !id.is_empty()).map(str::to_string).collect())
                .unwrap_or_default();
            let replayed = app
                .capabilities()
                .messaging
                .broker
                .replay(component.as_deref(), &ids)
                .await;
            if let Ok(letters) = &replayed {
                tracing::info!(replayed = letters.len(), component = ?component, "dead letters replayed");
            }
            broker_answer(replayed)
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not found",
            format!("the admin API has no {} {path}", request.method()),
        ),
    }
}

/// `/readyz`: 200 once every component of the manifest is loaded and every backend the host
/// uses answers (each capability's checks: the broker, key-value stores on a server,
/// PostgreSQL servers in use; and the cluster store); else 503 naming each failing check and
/// why.
async fn readiness(rollout: &Rollout) -> HttpResponse {
    let app = rollout.app();
    let mut checks: Vec<Check> = Vec::new();
    for name in app.manifest.components.keys() {
        // A dependency or middleware runs composed into others: loaded once its version is.
        if app.slot(name).is_none() && app.dependency_version(name).is_none() {
            checks.push(Check {
                name: format!("component {name}"),
                outcome: Err("not loaded".into()),
            });
        }
    }
    let capabilities = app.capabilities().all();
    let capability_checks =
        futures_util::future::join_all(capabilities.iter().map(|capability| capability.readiness()));
    let cluster = async {
        match rollout.cluster() {
            Some(cluster) => Some(bounded_check("cluster store".to_string(), cluster.check()).await),
            None => None,
        }
    };
    let (capability_checks, cluster) = tokio::join!(capability_checks, cluster);
    checks.extend(capability_checks.into_iter().flatten());
    checks.extend(cluster);
    let failing: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .filter_map(|check| {
            check
                .outcome
                .as_ref()
                .err()
                .map(|why| (check.name.clone(), why.clone().into()))
        })
        .collect();
    let passing: Vec<&str> = checks
        .iter()
        .filter(|check| check.outcome.is_ok())
        .map(|check| check.name.as_str())
        .collect();
    let components = app.slots().len();
    if failing.is_empty() {
        json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ready", "components": components, "checks": passing }),
        )
    } else {
        tracing::debug!(failing = ?failing, "not ready");
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "components": components, "checks": passing, "failing": failing }),
        )
    }
}

fn broker_answer(outcome: Result<Vec<DeadLetter>, BrokerError>) -> HttpResponse {
    match outcome {
        Ok(dead_letters) => json(StatusCode::OK, &DeadLetterList { dead_letters }),
        Err(BrokerError::Invalid(detail)) => json_error(StatusCode::NOT_FOUND, "not found", detail),
        Err(BrokerError::Unavailable(detail)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable", detail)
        }
    }
}

fn deploy_answer(outcome: Result<deploy::DeployReport, DeployError>) -> HttpResponse {
    match outcome {
        Ok(report) => json(StatusCode::OK, &report),
        Err(err) => {
            let status = match &err {
                DeployError::Conflict { .. } => StatusCode::CONFLICT,
                DeployError::NotFound { .. } => StatusCode::NOT_FOUND,
                DeployError::Failed {
                    step: deploy::Step::Journal,
                    ..
                } => StatusCode::INTERNAL_SERVER_ERROR,
                DeployError::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let error = if status == StatusCode::CONFLICT {
                "conflict"
            } else {
                "deploy failed"
            };
            json(
                status,
                &serde_json::json!({ "error": error, "step": err.step(), "detail": err.to_string() }),
            )
        }
    }
}

fn bad_deploy_request(name: &str, reason: &str) -> HttpResponse {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({
            "error": "deploy failed",
            "step": "receive",
            "detail": format!("deploy of `{name}` failed at step `receive`: {reason}; the previous version keeps serving"),
        }),
    )
}

pub fn status(app: &App) -> Vec<ComponentStatus> {
    app.slots()
        .iter()
        .map(|slot| {
            let live = slot.live.load();
            let deployed_at_unix_ms = crate::clock::unix_ms_of(live.deployed_at);
            ComponentStatus {
                name: slot.spec.name.clone(),
                route: match &slot.spec.route {
                    Some(HttpRoute::Public(pattern)) => Some(pattern.to_string()),
                    Some(HttpRoute::Private) => Some("(private)".into()),
                    None => None,
                },
                version: live.digest.to_string(),
                deployed_at_unix_ms,
                in_flight: live.in_flight(),
                requests: slot.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                errors: slot.stats.errors.load(std::sync::atomic::Ordering::Relaxed),
                world: live.world.to_string(),
                instances: live.pooled_instances(),
                canary: slot.canary.load_full().map(|canary| {
                    let (stable, counts) = canary.counts();
                    CanaryStatus {
                        version: canary.deployment.digest.to_string(),
                        share_percent: canary.share() as f64 / 100.0,
                        sticky: canary.policy.sticky.clone(),
                        started_at_unix_ms: canary.started_at_unix_ms,
                        in_flight: canary.deployment.in_flight(),
                        window_seconds: canary.policy.window_ms as f64 / 1000.0,
                        stable,
                        canary: counts,
                        policy: canary.policy.clone(),
                    }
                }),
                last_canary: slot.last_canary.load_full().map(|ended| ended.to_string()),
                composed_into: Vec::new(),
            }
        })
        .chain(
            app.dependency_versions()
                .into_iter()
                .map(|(name, version)| ComponentStatus {
                    composed_into: app.manifest.dependents_of(&name),
                    name,
                    route: None,
                    version: version.digest.to_string(),
                    deployed_at_unix_ms: crate::clock::unix_ms_of(version.deployed_at),
                    in_flight: 0,
                    requests: 0,
                    errors: 0,
                    world: "dependency".to_string(),
                    instances: 0,
                    canary: None,
                    last_canary: None,
                }),
        )
        .collect()
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

/// A query value percent-decoded, `+` as a space (form encoding, as browsers and curl send
/// it); an escape that is not two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    // `+` becomes a space before decoding, so that an escaped plus (`%2B`) stays a plus.
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_routes_in_queries() {
        assert_eq!(
            query_value("route=%2Fhello%2F...", "route").as_deref(),
            Some("/hello/...")
        );
        assert_eq!(query_value("a=1&route=/x", "route").as_deref(), Some("/x"));
        assert_eq!(query_value("route=%zz%", "route").as_deref(), Some("%zz%"));
        assert_eq!(query_value("route=%", "route").as_deref(), Some("%"));
        assert_eq!(query_value("x=1", "route"), None);
    }

    #[test]
    fn decodes_plus_as_space_and_escapes_as_bytes() {
        assert_eq!(query_value("ids=a+b", "ids").as_deref(), Some("a b"));
        assert_eq!(query_value("ids=a%2Bb", "ids").as_deref(), Some("a+b"));
        assert_eq!(query_value("c=caf%C3%A9", "c").as_deref(), Some("café"));
        assert_eq!(query_value("c=%FF", "c").as_deref(), Some("\u{FFFD}"));
    }

    /// A value whose serialisation fails, as a map with a non-string key does in JSON.
    struct Unserialisable;

    impl Serialize for Unserialisable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("the answer holds a value JSON cannot carry"))
        }
    }

    #[tokio::test]
    async fn an_answer_that_does_not_serialise_is_a_500_naming_why() {
        let response = json(StatusCode::OK, &Unserialisable);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "answer not serialisable", "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("could not serialise") && detail.contains("a value JSON cannot carry"),
            "{detail}"
        );
    }
}
