//! The HTTP client side every benchmark shares: keep-alive connections for the load and the
//! rollout pollers, and one-shot calls (admin API, setup statements, reading an answer).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A keep-alive HTTP/1.1 connection to `addr`, without Nagle's delay (it would add up to 40 ms
/// to small requests), its connection task spawned. The error says which step failed.
pub(super) async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("HTTP handshake with {addr}: {err}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends `request` on `sender` and reads the whole answer.
pub(super) async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let response = sender.send_request(request).await.map_err(|err| err.to_string())?;
    let status = response.status();
    match response.into_body().collect().await {
        Ok(body) => Ok((status, body.to_bytes())),
        Err(err) => Err(format!("{status}, then reading the body: {err}")),
    }
}

/// One request on a connection of its own.
async fn exchange_once(addr: SocketAddr, request: hyper::Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
    let mut sender = connect(addr).await.map_err(|err| anyhow!(err))?;
    exchange(&mut sender, request).await.map_err(|err| anyhow!(err))
}

/// A deploy (or other admin call) through the admin API at `addr`; fails unless it answers 2xx.
pub(super) async fn admin_call(addr: SocketAddr, token: &str, path: &str, body: Bytes) -> Result<()> {
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))?;
    let (status, text) = exchange_once(addr, request).await?;
    if !status.is_success() {
        bail!("deploy failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

/// One POST; fails unless it answers 2xx.
pub(super) async fn post_once(addr: SocketAddr, path: &str, body: &'static str) -> Result<()> {
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let (status, text) = exchange_once(addr, request).await?;
    if !status.is_success() {
        bail!("POST {path} failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

/// The body `GET path` answers, whatever its status.
pub(super) async fn body_of(addr: SocketAddr, path: &str) -> Result<String> {
    let request = hyper::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let (_, body) = exchange_once(addr, request).await?;
    Ok(String::from_utf8_lossy(&body).to_string())
}

/// Polls `path` on `addr` until it answers `expected` (errors count as not yet), for at most
/// `bound`.
pub(super) async fn wait_for_body(addr: SocketAddr, path: &str, expected: &str, bound: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let answer = body_of(addr, path).await;
        if matches!(&answer, Ok(body) if body == expected) {
            return Ok(());
        }
        if started.elapsed() > bound {
            bail!("{addr}{path} did not answer {expected:?} within {bound:?}; the last answer: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
