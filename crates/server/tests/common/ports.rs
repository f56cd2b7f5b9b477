//! Ports for test servers, shared by the server's and the CLI's tests.

use std::sync::atomic::{AtomicU16, Ordering};

/// The ports handed out: below Linux's default ephemeral range (32768–60999).
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A port free a moment ago, below the ephemeral range. A port from `bind(0)` is an ephemeral
/// one: between the test freeing it and the server binding it, any outgoing connection (a peer
/// dialling, a client) may be given it, and the server then fails to start. Ports below the
/// range are never given to outgoing connections. Each call in a process takes the next port,
/// starting at an offset of the process id, so tests running at once do not pick the same one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = RANGE.end - RANGE.start;
    let offset = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = RANGE.start + (offset + n) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {RANGE:?}");
}
