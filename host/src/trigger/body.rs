//! Body helpers: a size cap that turns an oversized body into a wasi-http error, and the
//! small JSON error bodies the host answers with.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::Error as HttpError;

/// Passes a body through until more than `limit` bytes went by, then fails with `overflow`.
pub struct CappedBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    overflow: fn(u64) -> HttpError,
    /// Set once the cap is crossed, for whoever must answer for it (a 413).
    tripped: Arc<AtomicBool>,
}

impl<B> CappedBody<B> {
    pub fn new(inner: B, limit: u64, overflow: fn(u64) -> HttpError) -> Self {
        Self {
            inner,
            seen: 0,
            limit,
            overflow,
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets `tripped` when the body crosses the cap.
    pub fn reporting_to(mut self, tripped: Arc<AtomicBool>) -> Self {
        self.tripped = tripped;
        self
    }
}

pub fn request_too_large(limit: u64) -> HttpError {
    HttpError::HttpRequestBodySize(Some(limit))
}

pub fn response_too_large(limit: u64) -> HttpError {
    HttpError::HttpResponseBodySize(Some(limit))
}

impl<B> Body for CappedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.tripped.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err((this.overflow)(this.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of a response from a pooled instance: it keeps `guard` (the request's in-flight
/// count and admission) alive until it has been read to its end or dropped, and it ends in an
/// error, not a clean end, when the instance failed before the guest finished the body.
pub struct PooledBody<B, G> {
    inner: B,
    guard: Option<G>,
    instance_failed: Arc<AtomicBool>,
}

impl<B, G> PooledBody<B, G> {
    pub fn new(inner: B, guard: G, instance_failed: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            guard: Some(guard),
            instance_failed,
        }
    }
}

impl<B, G> Body for PooledBody<B, G>
where
    B: Body<Error = HttpError> + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, HttpError>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) && this.instance_failed.load(Ordering::SeqCst) {
            polled = Poll::Ready(Some(Err(HttpError::InternalError(Some(
                "the instance ended before its response body did".into(),
            )))));
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn full(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// 413 for a request body over `limits.max_request_body_bytes`.
pub fn payload_too_large(limit: u64) -> hyper::Response<HyperOutgoingBody> {
    json_error(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large",
        format!("the body is over the limit of {limit} bytes (limits.max_request_body_bytes)"),
    )
}

/// `{ "error": ..., "detail": ... }` with the given status.
pub fn json_error(
    status: http::StatusCode,
    error: &str,
    detail: impl Into<String>,
) -> hyper::Response<HyperOutgoingBody> {
    let body = serde_json::json!({ "error": error, "detail": detail.into() });
    let mut response = hyper::Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
