//! Body helpers: a size cap that turns an oversized body into a wasi-http error, and the
//! small JSON error bodies the host answers with.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
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
///
/// It reads ahead of hyper so that a short body goes out in one write. A guest's body stream
/// closes a moment after its last write (the instance's event loop delivers the close on a
/// later turn); read as it comes, a chunked body's final chunk then leaves in a second
/// `writev`, and on loopback each write costs the server the client's whole receive path.
/// [`PooledBody::read_ahead`], before the response head is handed to hyper, waits at most two
/// turns of the scheduler for the first frame and the end after it: a body that ends there
/// gets a `content-length` and leaves with its head in one write; a streamed one is held back
/// by no more than those turns. Later, each data frame is followed by a look (no wait) at the
/// next, so the end leaves with the last data whenever it is already there.
pub struct PooledBody<B: Body, G> {
    inner: B,
    guard: Option<G>,
    instance_failed: Arc<AtomicBool>,
    /// Frames read ahead, handed out first.
    ahead: VecDeque<Result<Frame<B::Data>, HttpError>>,
    /// The inner body has ended (possibly seen while reading ahead).
    ended: bool,
}

/// How many turns of the scheduler [`PooledBody::read_ahead`] gives the guest.
const READ_AHEAD_TURNS: usize = 2;

impl<B: Body, G> PooledBody<B, G> {
    pub fn new(inner: B, guard: G, instance_failed: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            guard: Some(guard),
            instance_failed,
            ahead: VecDeque::new(),
            ended: false,
        }
    }
}

impl<B, G> PooledBody<B, G>
where
    B: Body<Error = HttpError> + Unpin,
    B::Data: Buf + Unpin,
    G: Unpin,
{
    /// Reads the first frame and looks for the end after it, giving the guest up to
    /// [`READ_AHEAD_TURNS`] turns of the scheduler (see the type's documentation).
    pub async fn read_ahead(&mut self) {
        for turn in 0..=READ_AHEAD_TURNS {
            if std::future::poll_fn(|cx| Poll::Ready(self.poll_ahead(cx))).await {
                return;
            }
            if turn < READ_AHEAD_TURNS {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Reads frames ahead until one data frame and what follows it are known; true once they are.
    fn poll_ahead(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            match self.ahead.back() {
                _ if self.ended || self.ahead.len() >= 2 => return true,
                Some(Err(_)) => return true,
                Some(Ok(frame)) if !frame.is_data() => return true,
                _ => {}
            }
            match self.poll_inner(cx) {
                Poll::Ready(Some(frame)) => self.ahead.push_back(frame),
                Poll::Ready(None) => return true,
                Poll::Pending => return false,
            }
        }
    }

    /// The inner body's next frame, an error instead of its end if the instance failed; the
    /// guard goes at the end.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, HttpError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if matches!(polled, None | Some(Err(_))) {
            self.guard = None;
        }
        if polled.is_none() {
            self.ended = true;
            if self.instance_failed.load(Ordering::SeqCst) {
                return Poll::Ready(Some(Err(HttpError::InternalError(Some(
                    "the instance ended before its response body did".into(),
                )))));
            }
        }
        Poll::Ready(polled)
    }
}

impl<B, G> Body for PooledBody<B, G>
where
    B: Body<Error = HttpError> + Unpin,
    B::Data: Buf + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, HttpError>>> {
        let this = &mut *self;
        let frame = match this.ahead.pop_front() {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(err))),
            None => match ready!(this.poll_inner(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            },
        };
        if frame.is_data() && this.ahead.is_empty() {
            // A look at the next frame: the end, if it is there, leaves with this data.
            match this.poll_inner(cx) {
                Poll::Ready(Some(next)) => this.ahead.push_back(next),
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ahead: u64 = self
            .ahead
            .iter()
            .filter_map(|frame| frame.as_ref().ok()?.data_ref())
            .map(|data| data.remaining() as u64)
            .sum();
        if self.ended && self.ahead.iter().all(|frame| frame.as_ref().is_ok_and(Frame::is_data)) {
            return SizeHint::with_exact(ahead);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(ahead));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(ahead));
        }
        hint
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A guest's body as the pool hands it over: frames as they are sent, Pending while none
    /// is waiting, the end once the sender is gone.
    struct GuestBody(mpsc::UnboundedReceiver<Frame<Bytes>>);

    impl Body for GuestBody {
        type Data = Bytes;
        type Error = HttpError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
            self.0.poll_recv(cx).map(|frame| frame.map(Ok))
        }
    }

    fn pooled() -> (
        mpsc::UnboundedSender<Frame<Bytes>>,
        PooledBody<GuestBody, ()>,
        Arc<AtomicBool>,
    ) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        (sender, PooledBody::new(GuestBody(receiver), (), failed.clone()), failed)
    }

    #[tokio::test]
    async fn a_body_that_ends_after_one_frame_is_sent_whole_with_its_length() {
        let (sender, mut body, _) = pooled();
        sender.send(Frame::data(Bytes::from_static(b"hello"))).unwrap();
        // The close arrives on a later turn, as a guest's does.
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(sender);
        });
        body.read_ahead().await;
        assert_eq!(body.size_hint().exact(), Some(5));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "hello");
        assert!(body.is_end_stream(), "the end leaves with the data");
        assert!(body.guard.is_none(), "the guard goes with the end");
    }

    #[tokio::test]
    async fn a_streamed_body_is_not_held_and_loses_no_frame() {
        let (sender, mut body, _) = pooled();
        sender.send(Frame::data(Bytes::from_static(b"one"))).unwrap();
        body.read_ahead().await;
        assert_eq!(body.size_hint().exact(), None, "no length while the body goes on");
        let next = |body: &mut PooledBody<GuestBody, ()>| {
            let body = std::pin::pin!(body);
            let waker = std::task::Waker::noop();
            body.poll_frame(&mut Context::from_waker(waker))
        };
        let Poll::Ready(Some(Ok(first))) = next(&mut body) else {
            panic!("the first frame is handed out at once");
        };
        assert_eq!(first.into_data().unwrap(), "one");
        assert!(!body.is_end_stream());
        assert!(next(&mut body).is_pending(), "nothing more yet");
        sender.send(Frame::data(Bytes::from_static(b"two"))).unwrap();
        sender.send(Frame::data(Bytes::from_static(b"three"))).unwrap();
        drop(sender);
        let mut rest = Vec::new();
        while let Poll::Ready(Some(frame)) = next(&mut body) {
            rest.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(rest, ["two", "three"]);
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_body_cut_by_a_failed_instance_ends_in_an_error() {
        let (sender, mut body, failed) = pooled();
        sender.send(Frame::data(Bytes::from_static(b"part"))).unwrap();
        failed.store(true, Ordering::SeqCst);
        drop(sender);
        body.read_ahead().await;
        assert_eq!(body.size_hint().exact(), None, "a cut body has no length");
        let mut frames = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frames.push(frame.map(|frame| frame.into_data().unwrap()));
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].as_ref().unwrap(), "part");
        assert!(frames[1].is_err(), "the end is an error, not a clean end");
    }
}
