//! What every spin-sdk 5.2 service of the reference application shares: [`shared`]'s answers
//! and parsing as spin-sdk 5.2 responses and requests, reading JSON bodies, calls to another
//! service over `http://NAME.spin.internal`, publishing events, and the health answer. The
//! spin-sdk 7 services have the same on top of `shared` in `common7`.

pub use shared::{events, jwt, now_unix, Answer, Reply, USER_HEADER};

use serde::de::DeserializeOwned;
use serde::Serialize;
use spin_sdk::http::{Method, Request, Response};

/// A [`Reply`] as a spin-sdk 5.2 response.
pub fn respond(reply: Reply) -> Response {
    let mut response = Response::builder();
    response.status(reply.status);
    for (name, value) in &reply.headers {
        response.header(name.as_str(), value.as_str());
    }
    response.body(reply.body).build()
}

/// A JSON answer.
pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
    respond(shared::json(status, value))
}

/// The error shape of every service: `{"error": ..., "detail": ...}`.
pub fn error(status: u16, error: &str, detail: impl std::fmt::Display) -> Response {
    respond(shared::error(status, error, detail))
}

pub fn not_found(what: impl std::fmt::Display) -> Response {
    respond(shared::not_found(what))
}

pub fn method_not_allowed(req: &Request) -> Response {
    respond(shared::method_not_allowed(req.method(), req.path()))
}

/// A 503 answer for a service that failed us, naming it.
pub fn upstream_failed(service: &str, detail: impl std::fmt::Display) -> Response {
    respond(shared::upstream_failed(service, detail))
}

/// The request body as `T`, or a 400 answer that says what is wrong with it.
pub fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    shared::parse_body(req.body()).map_err(respond)
}

/// The path split into its segments: `/orders/3` → `["orders", "3"]`.
pub fn segments(req: &Request) -> Vec<String> {
    shared::segments(req.path())
}

/// A path segment as an id, or a 404 naming it (an id that cannot exist is not there).
pub fn id(segment: &str, what: &str) -> Result<i64, Response> {
    shared::id(segment, what).map_err(respond)
}

/// The value of `name` in the query string, percent-decoded.
pub fn query_param(req: &Request, name: &str) -> Option<String> {
    shared::query_param(req.query(), name)
}

/// The authenticated caller the gateway named, or a 401.
pub fn caller(req: &Request) -> Result<i64, Response> {
    shared::caller(req.header(USER_HEADER).and_then(|value| value.as_str())).map_err(respond)
}

/// Calls `service` in-process (`http://SERVICE.spin.internal PATH`), on behalf of `user` if
/// given. An error means the service could not be reached at all.
pub async fn call(
    service: &str,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    user: Option<i64>,
) -> Result<Answer, String> {
    let mut request = Request::builder();
    request.method(method).uri(shared::internal_url(service, path));
    if let Some(user) = user {
        request.header(USER_HEADER, user.to_string());
    }
    if body.is_some() {
        request.header("content-type", "application/json");
    }
    let request = request.body(body.unwrap_or_default()).build();
    let response: Response = spin_sdk::http::send(request)
        .await
        .map_err(|err| format!("{service} is unreachable: {err}"))?;
    Ok(Answer {
        status: *response.status(),
        body: response.into_body(),
    })
}

/// Publishes `event` on `channel` through spin-sdk's Redis client: Mosaic's durable broker,
/// or the Redis server of the `redis_address` variable under Spin.
pub fn publish<T: Serialize>(channel: &str, event: &T) -> Result<(), String> {
    let address = spin_sdk::variables::get("redis_address").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let payload = serde_json::to_vec(event).map_err(|err| err.to_string())?;
    spin_sdk::redis::Connection::open(&address)
        .and_then(|connection| connection.publish(channel, &payload))
        .map_err(|err| format!("cannot publish `{channel}`: {err}"))
}

/// The `GET /health` answer of a service whose database is `database`.
pub fn health(service: &str, database: &str) -> Response {
    let answered = spin_sdk::sqlite::Connection::open(database)
        .and_then(|connection| connection.execute("SELECT 1", &[]).map(|_| ()));
    respond(shared::health(service, database, answered))
}
