//! A snapshot's file written by a thread of its own while the driver encodes the state, a step
//! per round: each step's bytes go to the writer as they are made, so the encoding is never held
//! whole (it was: 320 MB at 1M keys, on top of the state, for every snapshot).
//!
//! The driver never blocks on the writer: pieces go through a bounded channel, a piece the
//! channel has no room for waits in [`Streamer`], and the driver encodes no further step while
//! one waits (the writer is behind, so memory stays bounded by the channel).

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use balsa_raft::{Snapshot, SnapshotMeta};
use balsa_storage::{SnapshotWriter, StorageError};
use bytes::Bytes;

/// Pieces in the channel at most: with the driver's 1 MiB steps, a few MiB ahead of the writer.
const CHANNEL_PIECES: usize = 4;

/// What the driver sends the writer.
enum Piece {
    /// The next bytes of the encoding.
    Data(Bytes),
    /// The encoding is complete: its first bytes as they must finally read.
    Finish(Vec<u8>),
}

/// What a snapshot's write came to: the snapshot (its data read from the file) and the writer's
/// busy time, or why it failed.
pub(crate) type Written = Result<(Snapshot, Duration), StorageError>;

/// The driver's end of a snapshot being written. Dropped before [`Streamer::wait`] (the
/// snapshot given up: the state it was of was replaced, or the node stops mid-encoding), it
/// hangs up and waits for the writer to remove its unfinished file, so no writer outlives the
/// node that started it.
pub(crate) struct Streamer {
    /// `None` once hung up.
    to_writer: Option<SyncSender<Piece>>,
    /// Pieces the channel had no room for, oldest first.
    waiting: VecDeque<Piece>,
    /// `None` once joined.
    thread: Option<std::thread::JoinHandle<Written>>,
}

impl Streamer {
    /// Starts the writer of the snapshot with `meta`. `wake` is called when the write is done
    /// or failed (not when the driver gave the snapshot up by dropping the streamer).
    pub(crate) fn start(
        writer: SnapshotWriter<balsa_storage::StdFs>,
        meta: SnapshotMeta,
        wake: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (to_writer, from_driver) = sync_channel(CHANNEL_PIECES);
        let thread = std::thread::Builder::new().name("balsa-snapshot".into()).spawn(move || {
            let outcome = write(&writer, meta, &from_driver);
            if outcome.as_ref().err().is_none_or(|e| !is_abandoned(e)) {
                wake();
            }
            outcome
        })?;
        Ok(Self { to_writer: Some(to_writer), waiting: VecDeque::new(), thread: Some(thread) })
    }

    /// Hands the next bytes of the encoding to the writer (or queues them).
    pub(crate) fn send(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.waiting.push_back(Piece::Data(data));
        }
        self.flush();
    }

    /// Tells the writer the encoding is complete; `head` replaces its first bytes.
    pub(crate) fn finish(&mut self, head: Vec<u8>) {
        self.waiting.push_back(Piece::Finish(head));
        self.flush();
    }

    /// Hands waiting pieces over as far as the channel has room; true if none is left waiting.
    /// A writer that stopped (it failed) takes nothing more: its outcome says why.
    pub(crate) fn flush(&mut self) -> bool {
        let Some(to_writer) = &self.to_writer else { return true };
        while let Some(piece) = self.waiting.pop_front() {
            match to_writer.try_send(piece) {
                Ok(()) => {}
                Err(TrySendError::Full(piece)) => {
                    self.waiting.push_front(piece);
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => self.waiting.clear(),
            }
        }
        true
    }

    /// Whether pieces wait for room in the channel (the writer is behind).
    pub(crate) fn is_backed_up(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether [`Streamer::wait`] would return at once.
    pub(crate) fn is_finished(&self) -> bool {
        self.waiting.is_empty() && self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Hands every waiting piece over, waiting for room, then waits for the writer's outcome.
    pub(crate) fn wait(mut self) -> Written {
        let to_writer = self.to_writer.take().expect("hung up only here and in drop");
        for piece in std::mem::take(&mut self.waiting) {
            if to_writer.send(piece).is_err() {
                break;
            }
        }
        drop(to_writer);
        let thread = self.thread.take().expect("joined only here and in drop");
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.to_writer = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: the file from the pieces, until the finish (or the driver hangs up).
fn write(
    writer: &SnapshotWriter<balsa_storage::StdFs>,
    meta: SnapshotMeta,
    from_driver: &Receiver<Piece>,
) -> Written {
    let mut busy = Duration::ZERO;
    let begun = Instant::now();
    let mut stream = writer.stream(meta)?;
    busy += begun.elapsed();
    loop {
        let piece = from_driver.recv().map_err(|_| abandoned())?;
        let begun = Instant::now();
        match piece {
            Piece::Data(data) => stream.append(&data)?,
            Piece::Finish(head) => {
                let snapshot = stream.finish(&head)?;
                return Ok((snapshot, busy + begun.elapsed()));
            }
        }
        busy += begun.elapsed();
    }
}

const ABANDONED: &str = "snapshot abandoned before it was complete";

fn abandoned() -> StorageError {
    StorageError::Invalid(ABANDONED.into())
}

fn is_abandoned(e: &StorageError) -> bool {
    matches!(e, StorageError::Invalid(reason) if reason == ABANDONED)
}
