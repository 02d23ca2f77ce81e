//! What every service of the reference application shares: JSON answers and the error shape
//! `{"error","detail"}`, reading JSON bodies, calls to another service over
//! `http://NAME.spin.internal`, HS256 JSON Web Tokens, and publishing events.

pub mod jwt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use spin_sdk::http::{Method, Request, Response};

/// The header the gateway sets to the authenticated user's id.
pub const USER_HEADER: &str = "x-user-id";

/// A JSON answer.
pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body)
            .build(),
        Err(err) => error(500, "internal error", format!("cannot encode the answer: {err}")),
    }
}

/// The error shape of every service: `{"error": ..., "detail": ...}`.
pub fn error(status: u16, error: &str, detail: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": error, "detail": detail.to_string() });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}

pub fn not_found(what: impl std::fmt::Display) -> Response {
    error(404, "not found", what)
}

pub fn method_not_allowed(req: &Request) -> Response {
    error(
        405,
        "method not allowed",
        format!("{} is not served on {}", req.method(), req.path()),
    )
}

/// The request body as `T`, or a 400 answer that says what is wrong with it.
pub fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    if req.body().is_empty() {
        return Err(error(400, "invalid request", "the request needs a JSON body"));
    }
    serde_json::from_slice(req.body()).map_err(|err| error(400, "invalid request", format!("invalid JSON body: {err}")))
}

/// The path split into its segments: `/orders/3` → `["orders", "3"]`.
pub fn segments(req: &Request) -> Vec<String> {
    req.path()
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(str::to_string)
        .collect()
}

/// A path segment as an id, or a 404 naming it (an id that cannot exist is not there).
pub fn id(segment: &str, what: &str) -> Result<i64, Response> {
    segment
        .parse::<i64>()
        .map_err(|_| not_found(format!("no {what} with id `{segment}`")))
}

/// The value of `name` in the query string, percent-decoded.
pub fn query_param(req: &Request, name: &str) -> Option<String> {
    req.query()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

/// Form decoding: `+` is a space, `%XX` a byte; an escape that is not two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    // `+` becomes a space before decoding, so that an escaped plus (`%2B`) stays a plus.
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// The authenticated caller the gateway named, or a 401.
pub fn caller(req: &Request) -> Result<i64, Response> {
    req.header(USER_HEADER)
        .and_then(|value| value.as_str())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| error(401, "unauthorized", "this route needs an authenticated user"))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// What another service answered.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|err| format!("unexpected answer ({err})"))
    }

    /// The `detail` (or else the whole body) of an error answer, for a message.
    pub fn detail(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|value| value.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
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
    request
        .method(method)
        .uri(format!("http://{service}.spin.internal{path}"));
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

/// Passes a client's request on to `service` in-process as it came (method, path and query,
/// body and its content type), on behalf of `user` (sent as `x-user-id`) if given, and hands
/// back the service's response whole: the gateway's way of calling, where [`call`] would
/// impose JSON and drop the answer's headers. An error means the service could not be reached.
pub async fn forward(
    service: &str,
    method: Method,
    path_and_query: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
    user: Option<&str>,
) -> Result<Response, String> {
    let mut request = Request::builder();
    request
        .method(method)
        .uri(format!("http://{service}.spin.internal{path_and_query}"));
    if let Some(user) = user {
        request.header(USER_HEADER, user);
    }
    if let Some(content_type) = content_type {
        request.header("content-type", content_type);
    }
    spin_sdk::http::send(request.body(body).build())
        .await
        .map_err(|err| format!("cannot be reached ({err})"))
}

/// A 503 (or 502) answer for a service that failed us, naming it.
pub fn upstream_failed(service: &str, detail: impl std::fmt::Display) -> Response {
    error(503, "service unavailable", format!("{service}: {detail}"))
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
    let answers = spin_sdk::sqlite::Connection::open(database)
        .and_then(|connection| connection.execute("SELECT 1", &[]).map(|_| ()));
    match answers {
        Ok(()) => json(200, &serde_json::json!({ "status": "ok", "service": service })),
        Err(err) => error(503, "unhealthy", format!("{service}: database `{database}`: {err}")),
    }
}
