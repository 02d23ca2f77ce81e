//! A guest's stdout and stderr as log events: each line a component writes becomes one
//! `tracing` event (target `mosaic::guest`) naming the component and the stream, inside the
//! span of the request or delivery that wrote it. So `--log-format json` stays one JSON object
//! per line whatever the guests print, and a guest's output carries its component, version and
//! trace id like the host's own lines.
//!
//! The line's span is the one [`OutputContext`] holds, set when the instance begins a request:
//! a WASI 0.3 guest's output is written by a task of its own, outside the request's span, and
//! a reused instance serves request after request.

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

/// The `tracing` span of the request (or delivery) an instance serves now: its output lines
/// are events in it. Shared by the instance's state and its stdout and stderr.
#[derive(Clone)]
pub struct OutputContext(Arc<std::sync::Mutex<tracing::Span>>);

impl Default for OutputContext {
    fn default() -> OutputContext {
        OutputContext(Arc::new(std::sync::Mutex::new(tracing::Span::none())))
    }
}

impl OutputContext {
    /// From now on, lines belong to `span` (when several requests share an instance at once,
    /// the last one to start).
    pub fn set(&self, span: tracing::Span) {
        if let Ok(mut current) = self.0.lock() {
            *current = span;
        }
    }

    fn span(&self) -> tracing::Span {
        self.0
            .lock()
            .map(|span| span.clone())
            .unwrap_or_else(|_| tracing::Span::none())
    }
}

/// The stdout or stderr of one component's instances.
pub struct GuestOutput {
    component: Arc<str>,
    stream: GuestStream,
    context: OutputContext,
}

impl GuestOutput {
    pub fn new(component: Arc<str>, stream: GuestStream, context: OutputContext) -> GuestOutput {
        GuestOutput {
            component,
            stream,
            context,
        }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            component: self.component.clone(),
            stream: self.stream,
            context: self.context.clone(),
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
    context: OutputContext,
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
        let span = self.context.span();
        // Nothing is entered when the span is off or none: the event stays in the current one.
        let _entered = (!span.is_none()).then(|| span.enter());
        tracing::info!(target: "mosaic::guest", component = %self.component, stream = self.stream.name(), "{line}");
        drop(_entered);
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
        let mut writer = GuestOutput::new(Arc::from("c"), GuestStream::Stdout, OutputContext::default()).writer();
        writer.push(b"no newline yet");
        assert_eq!(writer.pending, b"no newline yet");
        writer.push(b" ... done\nnext");
        assert_eq!(writer.pending, b"next");
        writer.push(&vec![b'x'; MAX_LINE_BYTES * 2 + 5]);
        assert_eq!(writer.pending.len(), 4 + 5, "whole chunks of the cap were logged");
    }
}
