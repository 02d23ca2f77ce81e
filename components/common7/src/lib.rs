//! What the spin-sdk 7 (WASI 0.3) services of the reference application share: [`shared`]'s
//! replies as spin-sdk 7 responses, reading a JSON body, calls to another service over
//! `http://NAME.spin.internal`, and the health answer. The spin-sdk 5.2 services have the same
//! on top of `shared` in `common`; a component links one of the two, never both.

pub use shared::{jwt, now_unix, Answer, Reply, USER_HEADER};

use serde::de::DeserializeOwned;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{box_body, BoxBody, EmptyBody, FullBody, Method, Request};

/// What a spin-sdk 7 handler answers.
pub type Response = http::Response<BoxBody>;

/// What another service answered, its body still to come.
pub type Forwarded = spin_sdk::http::Response;

/// A [`Reply`] as a spin-sdk 7 response.
pub fn respond(reply: Reply) -> Response {
    let mut response = http::Response::new(box_body(FullBody::new(bytes::Bytes::from(reply.body))));
    *response.status_mut() =
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The value of header `name`, if it is text.
pub fn header<'a, B>(req: &'a http::Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|value| value.to_str().ok())
}

/// The request body as `T`, or a 400 reply that says what is wrong with it.
pub async fn body<T: DeserializeOwned>(req: Request) -> Result<T, Reply> {
    let bytes = req
        .into_body()
        .bytes()
        .await
        .map_err(|err| shared::error(400, "invalid request", format!("cannot read the body: {err:?}")))?;
    shared::parse_body(&bytes)
}

/// Passes a request on to `service` in-process (`http://SERVICE.spin.internal PATH?QUERY`):
/// `method`, `body` (streamed as it comes) and its content type, on behalf of `user` (sent as
/// `x-user-id`) if given; hands back the service's response whole, its body not read yet. An
/// error means the service could not be reached.
pub async fn forward<B>(
    service: &str,
    method: Method,
    path_and_query: &str,
    body: B,
    content_type: Option<&str>,
    user: Option<&str>,
) -> Result<Forwarded, String>
where
    B: http_body::Body + std::any::Any,
    B::Data: Into<Vec<u8>>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    let mut request = http::Request::builder()
        .method(method)
        .uri(shared::internal_url(service, path_and_query));
    if let Some(user) = user {
        request = request.header(USER_HEADER, user);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let request = request
        .body(body)
        .map_err(|err| format!("is not a valid request ({err})"))?;
    spin_sdk::http::send(request)
        .await
        .map_err(|err| format!("cannot be reached ({err:?})"))
}

/// `GET PATH` of `service` in-process, its whole answer read. An error means the service
/// could not be reached at all.
pub async fn get(service: &str, path: &str) -> Result<Answer, String> {
    let unreachable = |err| format!("{service} {err}");
    let response = forward(service, Method::GET, path, EmptyBody::new(), None, None)
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .bytes()
        .await
        .map_err(|err| unreachable(format!("answered a body that broke off ({err:?})")))?;
    Ok(Answer {
        status,
        body: body.to_vec(),
    })
}

/// The `GET /health` reply of a service whose database is `database`.
pub async fn health(service: &str, database: &str) -> Reply {
    let answered = match spin_sdk::sqlite::Connection::open(database).await {
        Ok(connection) => match connection.execute("SELECT 1", []).await {
            Ok(result) => result.collect().await.map(|_| ()),
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    shared::health(service, database, answered.map_err(|err| format!("{err:?}")))
}
