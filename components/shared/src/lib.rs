//! What every service of the reference application shares, whichever spin-sdk it is built
//! with: the error shape `{"error","detail"}` and JSON answers as a [`Reply`] that each SDK's
//! crate turns into its own response type (`common` for spin-sdk 5.2, `common7` for spin-sdk 7),
//! path and query parsing, the caller's header, HS256 JSON Web Tokens, and what another
//! service answered. No spin-sdk here: a component links one SDK generation only.

pub mod events;
pub mod jwt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The header the gateway sets to the authenticated user's id.
pub const USER_HEADER: &str = "x-user-id";

/// An answer before it becomes an SDK's response: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The same answer with one more header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A JSON answer.
pub fn json<T: Serialize>(status: u16, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => Reply {
            status,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body,
        },
        Err(err) => error(500, "internal error", format!("cannot encode the answer: {err}")),
    }
}

/// The error shape of every service: `{"error": ..., "detail": ...}`.
pub fn error(status: u16, error: &str, detail: impl std::fmt::Display) -> Reply {
    json(
        status,
        &serde_json::json!({ "error": error, "detail": detail.to_string() }),
    )
}

pub fn not_found(what: impl std::fmt::Display) -> Reply {
    error(404, "not found", what)
}

pub fn method_not_allowed(method: impl std::fmt::Display, path: &str) -> Reply {
    error(405, "method not allowed", format!("{method} is not served on {path}"))
}

/// A 503 answer for a service that failed us, naming it.
pub fn upstream_failed(service: &str, detail: impl std::fmt::Display) -> Reply {
    error(503, "service unavailable", format!("{service}: {detail}"))
}

/// A request body as `T`, or a 400 answer that says what is wrong with it.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    if body.is_empty() {
        return Err(error(400, "invalid request", "the request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|err| error(400, "invalid request", format!("invalid JSON body: {err}")))
}

/// A path split into its segments: `/orders/3` → `["orders", "3"]`.
pub fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|segment| !segment.is_empty())
        .map(str::to_string)
        .collect()
}

/// A path segment as an id, or a 404 naming it (an id that cannot exist is not there).
pub fn id(segment: &str, what: &str) -> Result<i64, Reply> {
    segment
        .parse::<i64>()
        .map_err(|_| not_found(format!("no {what} with id `{segment}`")))
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
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

/// The authenticated caller named by the value of the `x-user-id` header, or a 401.
pub fn caller(user_header: Option<&str>) -> Result<i64, Reply> {
    user_header
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| error(401, "unauthorized", "this route needs an authenticated user"))
}

/// `http://SERVICE.spin.internal PATH`: where a service is reached in-process.
pub fn internal_url(service: &str, path_and_query: &str) -> String {
    format!("http://{service}.spin.internal{path_and_query}")
}

/// The `GET /health` answer of a service whose database answered `SELECT 1` with `answered`.
pub fn health<E: std::fmt::Display>(service: &str, database: &str, answered: Result<(), E>) -> Reply {
    match answered {
        Ok(()) => json(200, &serde_json::json!({ "status": "ok", "service": service })),
        Err(err) => error(503, "unhealthy", format!("{service}: database `{database}`: {err}")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_segments_and_queries() {
        let reply = error(404, "not found", "no order 3");
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, br#"{"detail":"no order 3","error":"not found"}"#);
        assert_eq!(segments("/orders//3/"), ["orders", "3"]);
        assert_eq!(id("x", "order").unwrap_err().status, 404);
        assert_eq!(query_param("a=1&user=a%2Bb+c", "user").as_deref(), Some("a+b c"));
        assert_eq!(caller(Some("7")), Ok(7));
        assert_eq!(caller(None).unwrap_err().status, 401);
    }
}
