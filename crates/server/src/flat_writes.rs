//! [`FlatWrites`]: a socket that tells its HTTP/2 writer it has no vectored writes, so that many
//! small gRPC messages leave in one system call.
//!
//! Why: the `h2` crate queues frames in a buffer of its own and writes the buffer when nothing
//! more is queued, except that a DATA frame's payload larger than a threshold is not copied into
//! the buffer but written after it with a vectored write; until that write is done, no further
//! frame may be queued. On a socket that does vectored writes the threshold is 256 bytes, and a
//! gRPC message of a 256-byte value with its key is larger: every such message (a put request,
//! a range answer) cost a write of its own, and a loopback packet, however many were waiting.
//! On a socket without vectored writes `h2` copies payloads of up to 1,024 bytes into its buffer,
//! so the messages waiting when the connection's task runs leave together.
//!
//! Measured (`balsa-bench put`, 256 clients on 16 connections, one-thread client; see
//! docs/BENCHMARKS.md, eleventh pass): the load generator's writes per put fell from 1.0 to 0.07,
//! and what the copies cost is a `memcpy` of bytes that are in cache.
//!
//! Reads, flushes and shutdowns pass through unchanged; so do vectored writes if a caller makes
//! them anyway.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream whose writer is told it has no vectored writes (see the module's documentation).
#[derive(Debug)]
pub struct FlatWrites<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for FlatWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FlatWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    /// The point of the type: writers that ask copy small payloads and write them together.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_through_both_ways_and_vectored_writes_are_not_offered() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, mut b) = (FlatWrites(a), FlatWrites(b));
        assert!(!a.is_write_vectored(), "the writer must be told to copy small payloads");
        a.write_all(b"put").await.unwrap();
        let written = a.write_vectored(&[IoSlice::new(b" k"), IoSlice::new(b" v")]).await.unwrap();
        assert!(written > 0, "a vectored write still writes");
        a.write_all(&b" k v"[written..]).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"put k v");
    }
}
