//! The gateway (docs/reference-app.md, "gateway"): the application's only public component.
//! For every request it identifies the client (the bearer token's subject, else its address),
//! counts the request against the client's per-minute limit, checks the token on the routes
//! that need one, passes the request to the service named by the first path segment as
//! `http://SERVICE.spin.internal`, and logs one JSON line on stdout.
//!
//! Built with spin-sdk 7 (WASI 0.3): the services behind it are asked concurrently, a request's
//! body streams through to the service and the service's answer streams back. Most services
//! stay on spin-sdk 5.2 (WASI 0.2): an application moves one component at a time.

use std::time::Instant;

use common7::{Reply, Response};
use serde::Serialize;
use shared::jwt::Claims;
use spin_sdk::http::{box_body, IntoResponse, Method, Request};
use spin_sdk::http_service;

/// `wasi:keyvalue@0.2.0-draft2` (store and atomics): Spin 4's `spin:key-value@3.0.0` has no
/// atomic increment, and a get then a set would let concurrent requests count once.
mod keyvalue {
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit/deps/keyvalue-2024-10-17",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
        generate_all,
    });
}

use keyvalue::wasi::keyvalue::{atomics, store};

/// The services behind the gateway: each serves the paths that start with its name.
const SERVICES: [&str; 6] = ["users", "products", "inventory", "orders", "payments", "notifications"];
const RATE_LIMIT_STORE: &str = "ratelimit";
const DEFAULT_RATE_LIMIT_PER_MINUTE: i64 = 600;
const WINDOW_SECONDS: i64 = 60;

/// What the request's `Authorization` header proves.
enum Credentials {
    Missing,
    /// A header without a valid token, and why.
    Invalid(String),
    /// The gateway cannot check tokens at all (its secret is not readable).
    Unverifiable(String),
    Valid(Claims),
}

/// Where a request goes.
enum Route {
    /// `GET /health`: the health of every service.
    Health,
    /// To `service` at `path_and_query`; `needs_token` unless it is registration or login.
    Upstream {
        service: &'static str,
        path_and_query: String,
        needs_token: bool,
    },
    /// Answered by the gateway itself: an unknown route or method.
    Refused(Reply),
}

/// The log line of a request, fields in the contract's order.
#[derive(Serialize)]
struct LogLine<'a> {
    component: &'static str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: u128,
    user: Option<&'a str>,
    client: &'a str,
    upstream: Option<&'a str>,
}

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let client_address = common7::header(&req, "spin-client-addr")
        .unwrap_or("unknown")
        .to_string();
    let credentials = credentials(&req).await;
    let user = match &credentials {
        Credentials::Valid(claims) => Some(claims.sub.as_str()),
        _ => None,
    };
    let (response, upstream) = serve(req, &credentials, user, &client_address).await;
    let line = LogLine {
        component: "gateway",
        method: method.as_str(),
        path: &path,
        status: response.status().as_u16(),
        duration_ms: started.elapsed().as_millis(),
        user,
        client: &client_address,
        upstream,
    };
    if let Ok(line) = serde_json::to_string(&line) {
        println!("{line}");
    }
    Ok(response)
}

/// The answer to `req`, and the service it went to (`*` for the health of all of them).
async fn serve(
    req: Request,
    credentials: &Credentials,
    user: Option<&str>,
    client_address: &str,
) -> (Response, Option<&'static str>) {
    // Before login a client is its IP address (without the port, which changes per connection).
    let client = user.map_or_else(|| client_ip(client_address), str::to_string);
    if let Some(refusal) = rate_limited(&client).await {
        return (common7::respond(refusal), None);
    }
    match route(&req) {
        Route::Health => (common7::respond(health().await), Some("*")),
        Route::Refused(reply) => (common7::respond(reply), None),
        Route::Upstream {
            service,
            path_and_query,
            needs_token,
        } => {
            let user = match (needs_token, credentials) {
                (false, _) => None,
                (true, Credentials::Valid(claims)) => Some(claims.sub.as_str()),
                (true, Credentials::Missing) => {
                    let refusal = unauthorized("this route needs an `Authorization: Bearer TOKEN` header");
                    return (common7::respond(refusal), None);
                }
                (true, Credentials::Invalid(why)) => return (common7::respond(unauthorized(why)), None),
                (true, Credentials::Unverifiable(why)) => {
                    return (common7::respond(shared::error(500, "internal error", why)), None)
                }
            };
            (pass_on(req, service, &path_and_query, user).await, Some(service))
        }
    }
}

/// The routing table: by the first path segment.
fn route(req: &Request) -> Route {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or_default();
    let segments = shared::segments(path);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let is_post = req.method() == Method::POST;
    let to_users = |target: &str| Route::Upstream {
        service: "users",
        path_and_query: with_query(target, query),
        needs_token: false,
    };
    match segments.as_slice() {
        ["health"] if req.method() == Method::GET => Route::Health,
        ["auth", "register"] if is_post => to_users("/users"),
        ["auth", "login"] if is_post => to_users("/users/authenticate"),
        ["health"] | ["auth", "register" | "login"] => Route::Refused(shared::method_not_allowed(req.method(), path)),
        [first, ..] => match SERVICES.iter().find(|service| *service == first) {
            Some(service) => Route::Upstream {
                service,
                path_and_query: with_query(path, query),
                needs_token: true,
            },
            None => Route::Refused(shared::not_found(format!("no route for {path}"))),
        },
        [] => Route::Refused(shared::not_found("no route for /")),
    }
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// Passes `req` to `service` on behalf of `user` and relays its status, body and content type;
/// both bodies stream through. The client's own headers stay here: above all any `x-user-id`
/// it sent.
async fn pass_on(req: Request, service: &str, path_and_query: &str, user: Option<&str>) -> Response {
    let content_type = common7::header(&req, "content-type").map(str::to_string);
    let (parts, body) = req.into_parts();
    let forwarded = common7::forward(
        service,
        parts.method,
        path_and_query,
        body,
        content_type.as_deref(),
        user,
    )
    .await;
    match forwarded {
        Ok(answer) => {
            let (parts, body) = answer.into_parts();
            let mut relayed = http::Response::new(box_body(body));
            *relayed.status_mut() = parts.status;
            if let Some(content_type) = parts.headers.get("content-type") {
                relayed.headers_mut().insert("content-type", content_type.clone());
            }
            relayed
        }
        Err(err) => common7::respond(shared::upstream_failed(service, err)),
    }
}

/// `GET /health`: asks every service at once; 200 while at least one is healthy.
async fn health() -> Reply {
    let checks = SERVICES.iter().map(|service| async move {
        let state = match common7::get(service, "/health").await {
            Ok(answer) if answer.is_success() => "ok".to_string(),
            Ok(answer) => format!("down: HTTP {}: {}", answer.status, answer.detail()),
            Err(err) => format!("down: {err}"),
        };
        (service.to_string(), serde_json::Value::String(state))
    });
    let services: serde_json::Map<String, serde_json::Value> =
        futures::future::join_all(checks).await.into_iter().collect();
    let healthy = services.values().filter(|state| *state == "ok").count();
    let status = if healthy == SERVICES.len() { "ok" } else { "degraded" };
    shared::json(
        if healthy > 0 { 200 } else { 503 },
        &serde_json::json!({ "status": status, "services": services }),
    )
}

async fn credentials(req: &Request) -> Credentials {
    let Some(authorization) = common7::header(req, "authorization") else {
        return Credentials::Missing;
    };
    let Some(token) = bearer_token(authorization) else {
        return Credentials::Invalid("the Authorization header is not `Bearer TOKEN`".to_string());
    };
    let secret = match spin_sdk::variables::get("jwt_secret").await {
        Ok(secret) => secret,
        Err(err) => return Credentials::Unverifiable(format!("the variable `jwt_secret` is not readable: {err:?}")),
    };
    match shared::jwt::verify(token, &secret, shared::now_unix()) {
        Ok(claims) => Credentials::Valid(claims),
        Err(why) => Credentials::Invalid(format!("invalid token: {why}")),
    }
}

fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(detail: impl std::fmt::Display) -> Reply {
    shared::error(401, "unauthorized", detail).with_header("www-authenticate", "Bearer")
}

/// Counts the request in the client's current one-minute window; the 429 answer when the client
/// is over its limit. If the store fails the request passes: the limit protects the services,
/// and a broken counter must not take the whole application down with it.
async fn rate_limited(client: &str) -> Option<Reply> {
    let now = shared::now_unix();
    let window = now / WINDOW_SECONDS;
    let count = match count_request(client, window) {
        Ok(count) => count,
        Err(err) => {
            eprintln!("gateway: rate limit not applied, the store `{RATE_LIMIT_STORE}` failed: {err:?}");
            return None;
        }
    };
    let limit = rate_limit_per_minute().await;
    if count <= limit {
        return None;
    }
    let retry_after = WINDOW_SECONDS - now % WINDOW_SECONDS;
    let refusal = shared::error(
        429,
        "too many requests",
        format!("more than {limit} requests in a minute; retry in {retry_after} s"),
    );
    Some(refusal.with_header("retry-after", retry_after.to_string()))
}

/// Increments the counter of `client` for `window` (a Unix minute) atomically and answers the
/// new count.
fn count_request(client: &str, window: i64) -> Result<i64, store::Error> {
    let bucket = store::open(RATE_LIMIT_STORE)?;
    let count = atomics::increment(&bucket, &window_key(client, window), 1)?;
    if count == 1 {
        // The client's first request in this window: the previous window's counter is done
        // with, so each active client keeps about one key.
        let _ = bucket.delete(&window_key(client, window - 1));
    }
    Ok(count)
}

fn window_key(client: &str, window: i64) -> String {
    format!("rl:{client}:{window}")
}

/// The variable `rate_limit_per_minute`, or the default for a missing or meaningless value.
async fn rate_limit_per_minute() -> i64 {
    spin_sdk::variables::get("rate_limit_per_minute")
        .await
        .ok()
        .and_then(|value| value.trim().parse::<i64>().ok())
        .filter(|limit| *limit > 0)
        .unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE)
}

/// The IP of a `spin-client-addr` value (`IP:PORT`).
fn client_ip(address: &str) -> String {
    address
        .parse::<std::net::SocketAddr>()
        .map(|address| address.ip().to_string())
        .unwrap_or_else(|_| address.to_string())
}
