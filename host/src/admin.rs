//! The admin API (loopback, bearer token): deploy, rollback, status, history; plus `/healthz`
//! and `/readyz` without a token.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/components/NAME/deploy[?route=/x/...]` | body: the component file |
//! | POST | `/v1/components/NAME/rollback` | |
//! | GET | `/v1/status` | |
//! | GET | `/v1/components/NAME/history` | |
//! | GET | `/v1/cluster` | cluster mode: desired versions, every host's versions |
//! | GET | `/v1/dlq[?component=NAME]` | the dead-letter store |
//! | POST | `/v1/dlq/replay[?component=NAME][&ids=ID,ID]` | all (of NAME), or those ids |

use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::manifest::HttpRoute;
use crate::app::App;
use crate::capability::messaging::{BrokerError, DeadLetter};
use crate::capability::{bounded_check, Check, Scrape};
use crate::deploy::journal;
use crate::deploy::{self, DeployError, DeployRequest};
use crate::rollout::Rollout;
use crate::stop::stopped;
use crate::trigger::body::{full, json_error};
use crate::trigger::http::HttpResponse;

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub route: Option<String>,
    pub version: String,
    pub deployed_at_unix_ms: u64,
    pub in_flight: u64,
    pub requests: u64,
    pub errors: u64,
}

pub async fn serve(listener: TcpListener, rollout: Rollout, token: String, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = stopped(&mut stop) => return,
        };
        let rollout = rollout.clone();
        let token = token.clone();
        let service = hyper::service::service_fn(move |request| {
            let rollout = rollout.clone();
            let token = token.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&rollout, &token, request).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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

fn json(status: StatusCode, value: &impl Serialize) -> HttpResponse {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(rollout: &Rollout, token: &str, request: hyper::Request<hyper::body::Incoming>) -> HttpResponse {
    let app = rollout.app();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => return json(StatusCode::OK, &serde_json::json!({ "status": "alive" })),
        (&Method::GET, ["metrics"]) => {
            let in_flight: Vec<(String, String, u64)> = app
                .slots()
                .iter()
                .map(|slot| {
                    let live = slot.live.load();
                    (
                        slot.spec.name.clone(),
                        live.short_digest().to_string(),
                        live.in_flight(),
                    )
                })
                .collect();
            let mut scrape = Scrape::default();
            for capability in app.capabilities().all() {
                capability.scrape(&mut scrape).await;
            }
            let mut response =
                crate::trigger::http::text(StatusCode::OK, app.metrics.render(&in_flight, &scrape.pending));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return response;
        }
        (&Method::GET, ["readyz"]) => return readiness(rollout).await,
        _ => {}
    }
    if !authorized(token, &request) {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` with the token from the state directory's admin-token file",
        );
    }
    let query = request.uri().query().unwrap_or("").to_string();
    match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["v1", "status"]) => json(StatusCode::OK, &status(app)),
        (Method::GET, ["v1", "components", name, "history"]) => match journal::read(&app.state.journal_path()) {
            Ok(entries) => {
                let history: Vec<_> = journal::history(&entries, name).into_iter().cloned().collect();
                let current = app.slot(name).map(|slot| slot.live.load().digest.clone());
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "component": name, "current": current, "history": history }),
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
            let request = DeployRequest::deploy(&name, Vec::from(body), route);
            deploy_answer(rollout.deploy(request).await)
        }
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
        if app.slot(name).is_none() {
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
        Ok(letters) => json(StatusCode::OK, &serde_json::json!({ "dead_letters": letters })),
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
            }
        })
        .collect()
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => hex(bytes[i + 1]).zip(hex(bytes[i + 2])).map(|(hi, lo)| hi * 16 + lo),
            _ => None,
        };
        match (decoded, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
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
}
