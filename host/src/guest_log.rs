//! A guest's stdout and stderr as log events: each line a component writes becomes one
//! `tracing` event (target `mosaic::guest`) naming the component and the stream, inside the
//! span of the request or delivery that wrote it. So `--log-format json` stays one JSON object
//! per line whatever the guests print, and a guest's output carries its component, version and
//! trace id like the host's own lines.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged as one event; a longer one is split (a guest printing without newlines
/// must not grow the host's memory).
const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, Debug)]
pub enum GuestStream {
    Stdout,
    Stderr,
}

impl GuestStream {
    fn name(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// The stdout or stderr of one component's instances.
pub struct GuestOutput {
    component: Arc<str>,
    stream: GuestStream,
}

impl GuestOutput {
    pub fn new(component: Arc<str>, stream: GuestStream) -> GuestOutput {
        GuestOutput { component, stream }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            component: self.component.clone(),
            stream: self.stream,
            pending: Vec::new(),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

/// Cuts what a guest writes into lines and logs each; a partial line waits for its end (or
/// for the stream to go).
struct LineWriter {
    component: Arc<str>,
    stream: GuestStream,
    pending: Vec<u8>,
}

impl LineWriter {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE_BYTES {
            let rest = self.pending.split_off(MAX_LINE_BYTES);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        // A blank line says nothing as a log event of its own.
        if line.trim().is_empty() {
            self.pending.clear();
            return;
        }
        tracing::info!(target: "mosaic::guest", component = %self.component, stream = self.stream.name(), "{line}");
        self.pending.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE_BYTES)
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_newlines_and_at_the_cap() {
        let mut writer = GuestOutput::new(Arc::from("c"), GuestStream::Stdout).writer();
        writer.push(b"no newline yet");
        assert_eq!(writer.pending, b"no newline yet");
        writer.push(b" ... done\nnext");
        assert_eq!(writer.pending, b"next");
        writer.push(&vec![b'x'; MAX_LINE_BYTES * 2 + 5]);
        assert_eq!(writer.pending.len(), 4 + 5, "whole chunks of the cap were logged");
    }
}
