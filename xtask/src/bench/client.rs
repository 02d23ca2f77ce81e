use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub(super) async fn admin_call(addr: SocketAddr, token: &str, path: &str, body: Bytes) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("deploy failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

/// One POST; fails unless it answers 2xx.
pub(super) async fn post_once(addr: SocketAddr, path: &str, body: &'static str) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("POST {path} failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

pub(super) async fn body_of(addr: SocketAddr, path: &str) -> Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    Ok(String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).to_string())
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
