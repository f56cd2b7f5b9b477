//! The stream hub: log stream subscribers, served on the driver thread.
//!
//! A subscriber is a stream name, the stream's incarnation id, the next offset it needs and a
//! bounded channel — nothing else. Two paths feed it, both on the driver thread, both keyed on
//! that one offset, so history and live records meet with no gap and no duplicate:
//!
//! - *live*: when an append is applied, its records go straight from the command to the
//!   subscribers waiting for exactly its first offset, if their channel has room (so a subscriber
//!   that keeps up gets every record even if retention removes it again before the next loop);
//! - *catch-up*: once per driver loop, every subscriber behind its stream's end whose channel has
//!   room is sent batches read from the stored records. Records are kept by offset, so this is a
//!   lookup, not a scan (the watch hub's "lagging watchers", simplified).
//!
//! A full channel never blocks the driver: the subscriber simply falls behind and is caught up
//! from the stored log when it reads again. Memory per subscriber is bounded by the channel:
//! [`SUBSCRIPTION_CAPACITY`] batches of at most [`BATCH_RECORDS`] records and about
//! [`BATCH_BYTES`] bytes (one larger record travels alone).
//!
//! A subscription ends with an error if the records it needs were removed by retention (it fell
//! further behind than the stream keeps) or its stream was deleted. A snapshot from the leader
//! needs nothing special: catch-up looks at the state as it is after the snapshot.

use balsa_kv::streams::{Record, StreamError, Streams};
use balsa_kv::{Command, KvError, Response, StreamCommand, StreamResponse};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::node::{Input, NodeError, NodeHandle};

/// Batches a subscription's channel holds.
pub const SUBSCRIPTION_CAPACITY: usize = 8;
/// Records in one batch, at most.
pub const BATCH_RECORDS: usize = 1000;
/// Payload bytes in one batch, at most (one larger record travels alone).
pub const BATCH_BYTES: usize = 1 << 20;

/// What a subscription delivers: consecutive records, continuing exactly where the last batch
/// stopped, or the error that ends it.
pub type StreamBatch = Result<Vec<(u64, Record)>, StreamError>;

/// Requests to the hub, carried to the driver thread.
pub(crate) enum StreamHubCommand {
    Subscribe {
        stream: String,
        from: u64,
        tx: mpsc::Sender<StreamBatch>,
        reply: oneshot::Sender<Result<(), StreamError>>,
    },
}

struct Subscriber {
    stream: String,
    /// The stream's incarnation when the subscription started.
    id: u64,
    /// The first offset not yet sent.
    next: u64,
    tx: mpsc::Sender<StreamBatch>,
}

/// The subscribers of one node (lives on the driver thread).
#[derive(Default)]
pub(crate) struct StreamHub {
    subscribers: Vec<Subscriber>,
}

impl StreamHub {
    pub(crate) fn handle(&mut self, command: StreamHubCommand, streams: &Streams) {
        match command {
            StreamHubCommand::Subscribe { stream, from, tx, reply } => {
                let checked = streams.get(&stream).and_then(|s| {
                    if from < s.first_offset {
                        return Err(StreamError::Removed {
                            stream: stream.clone(),
                            offset: from,
                            first: s.first_offset,
                        });
                    }
                    Ok(s.id)
                });
                match checked {
                    Ok(id) => {
                        // An offset beyond the end is allowed: the subscriber waits for it.
                        self.subscribers.push(Subscriber { stream, id, next: from, tx });
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// Hands the records of an append just applied to the subscribers waiting for exactly
    /// them, if their channel has room — before a later command's retention could remove them.
    /// The others are served by [`catch_up`](Self::catch_up).
    pub(crate) fn applied(&mut self, command: &Command, result: &Result<Response, KvError>) {
        let (Command::Stream(StreamCommand::Append { stream, records, .. }), Ok(Response::Stream(r))) =
            (command, result)
        else {
            return;
        };
        let StreamResponse::Appended { first_offset, last_offset, info } = r else { return };
        for sub in self.subscribers.iter_mut().filter(|s| s.next == *first_offset && s.id == info.id) {
            if sub.stream != *stream {
                continue;
            }
            if let Ok(permit) = sub.tx.try_reserve() {
                let batch = records
                    .iter()
                    .enumerate()
                    .map(|(i, data)| {
                        (first_offset + i as u64, Record { timestamp_ms: info.clock_ms, data: data.clone() })
                    })
                    .collect();
                permit.send(Ok(batch));
                sub.next = last_offset + 1;
            }
        }
    }

    /// Sends every subscriber what its channel has room for; drops subscribers that are gone or
    /// ended. Called once per driver loop, after applying.
    pub(crate) fn catch_up(&mut self, streams: &Streams) {
        self.subscribers.retain_mut(|sub| serve(sub, streams));
    }
}

/// Serves one subscriber; false once it is over.
fn serve(sub: &mut Subscriber, streams: &Streams) -> bool {
    loop {
        let ended = match streams.streams.get(&sub.stream) {
            Some(s) if s.id == sub.id => {
                if sub.next >= s.end_offset() {
                    return !sub.tx.is_closed();
                }
                if sub.next < s.first_offset {
                    Some(StreamError::Removed {
                        stream: sub.stream.clone(),
                        offset: sub.next,
                        first: s.first_offset,
                    })
                } else {
                    None
                }
            }
            _ => Some(StreamError::NotFound { stream: sub.stream.clone() }),
        };
        let permit = match sub.tx.try_reserve() {
            Ok(p) => p,
            Err(TrySendError::Full(())) => return true,
            Err(TrySendError::Closed(())) => return false,
        };
        if let Some(e) = ended {
            permit.send(Err(e));
            return false;
        }
        match streams.read(&sub.stream, sub.next, BATCH_RECORDS, BATCH_BYTES) {
            Ok(read) => {
                sub.next = read.next_offset;
                permit.send(Ok(read.records));
            }
            Err(e) => {
                permit.send(Err(e));
                return false;
            }
        }
    }
}

impl NodeHandle {
    /// Subscribes to `stream` from offset `from`, on this member's applied state: returns a
    /// channel of consecutive batches (history first, then records as they are applied). Fails
    /// at once if the stream does not exist or `from` was removed by retention.
    pub async fn subscribe_stream(
        &self,
        stream: String,
        from: u64,
    ) -> Result<mpsc::Receiver<StreamBatch>, NodeError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        let (reply, answer) = oneshot::channel();
        let command = StreamHubCommand::Subscribe { stream, from, tx, reply };
        self.input.send(Input::Streams(command)).map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)?.map_err(|e| NodeError::Kv(e.into()))?;
        Ok(rx)
    }
}
