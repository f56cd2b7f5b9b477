//! What can go wrong, as values: every gRPC status balsa (or etcd) answers is mapped to one
//! [`Error`] variant, so callers match on meaning rather than on codes and message strings.

use tonic::{Code, Status};

/// Errors returned by [`Client`](crate::Client) and the handles it gives out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The member asked is not the leader (and did not forward). Retried by the client; seen only
    /// when the retry budget runs out.
    #[error("not leader")]
    NotLeader,
    /// The member (or every member) cannot serve now: stopped, no leader, a membership change in
    /// flight, or unreachable. Retried by the client; seen only when the retry budget runs out.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer in time. For a write the outcome is unknown: it may have been applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The revision asked for has been compacted away. `compact_revision` is the compaction
    /// point when the server says it (watches do; reads do not).
    #[error("required revision has been compacted{}", compacted_at(*.compact_revision))]
    Compacted {
        /// The oldest revision still held minus one, if the server told us.
        compact_revision: Option<i64>,
    },
    /// The revision asked for is after the current revision.
    #[error("required revision is a future revision")]
    FutureRevision,
    /// No lease has this id (never granted, revoked, or expired).
    #[error("lease not found")]
    LeaseNotFound,
    /// A lease kept alive by [`KeepAlive`](crate::KeepAlive) is gone.
    #[error("lease {0:x} lost (expired or revoked)")]
    LeaseLost(i64),
    /// No member has this id.
    #[error("member not found")]
    MemberNotFound,
    /// The request is malformed (empty key, bad URL, ...); the message is the server's.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request is valid but refused in the cluster's current state (a learner not yet in
    /// sync, an existing member, ...); the message is the server's.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The write's session expired (unused for longer than its timeout) or is unknown to the
    /// cluster. The write was not applied by this attempt, but an earlier attempt of it may have
    /// been, and the answer that would tell is gone with the session: the outcome is unknown, so
    /// the client does not retry it. The client has already dropped the session; the next write
    /// uses another.
    #[error("session {client_id} expired or unknown; the write's outcome is unknown")]
    SessionExpired {
        /// The expired session.
        client_id: u64,
    },
    /// The write's sequence number is below the session's last: a newer write of the session was
    /// applied first. Not applied. (Only seen with a session shared outside this client.)
    #[error("stale sequence number: {0}")]
    StaleSequence(String),
    /// No log stream has this name.
    #[error("{0}")]
    StreamNotFound(String),
    /// The offset asked for was removed from the stream by retention (or a trim);
    /// `first_available` is the oldest record still held.
    #[error("stream {stream:?}: offset {offset} was removed by retention; the first available offset is {first_available}")]
    Retention {
        /// The stream.
        stream: String,
        /// The offset asked for.
        offset: u64,
        /// The first offset the stream still holds.
        first_available: u64,
    },
    /// The server ended a watch for a reason other than compaction.
    #[error("watch canceled: {0}")]
    WatchCanceled(String),
    /// An endpoint string the client cannot use.
    #[error("invalid endpoint {0:?}")]
    InvalidEndpoint(String),
    /// A local file operation failed (snapshot save).
    #[error("{0}")]
    Io(String),
    /// Any other answer: the gRPC code and the server's message.
    #[error("{code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

fn compacted_at(rev: Option<i64>) -> String {
    rev.map(|r| format!(" (compacted at revision {r})")).unwrap_or_default()
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether asking again, possibly elsewhere, may succeed: the member could not serve, or the
    /// connection failed. Timeouts are included (the client retries them too; see the crate docs
    /// on what that means for writes).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotLeader | Error::Unavailable(_) | Error::Timeout(_))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl From<Status> for Error {
    /// Maps etcd's codes and messages (balsa answers with the same ones).
    fn from(s: Status) -> Self {
        let message = s.message().to_string();
        let has = |needle: &str| message.contains(needle);
        match s.code() {
            _ if has("not leader") || has("no leader") => Error::NotLeader,
            Code::OutOfRange if has("compacted") => Error::Compacted { compact_revision: None },
            Code::OutOfRange if has("future revision") => Error::FutureRevision,
            Code::NotFound if has("lease not found") => Error::LeaseNotFound,
            Code::NotFound if has("member not found") => Error::MemberNotFound,
            Code::Unavailable if has("timed out") => Error::Timeout(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::DeadlineExceeded => Error::Timeout(message),
            // A connection refused, reset or broken mid-call reaches us as Unknown or Cancelled
            // with tonic's transport message; treat it as the member being unavailable.
            Code::Unknown | Code::Cancelled if is_transport_message(&message) => Error::Unavailable(message),
            Code::OutOfRange if has("removed by retention") => retention(&message),
            Code::NotFound if has("stream") && has("not found") => Error::StreamNotFound(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::FailedPrecondition if has("expired or unknown") => {
                Error::SessionExpired { client_id: number_after(&message, "session ").unwrap_or(0) }
            }
            Code::FailedPrecondition if has("is stale") => Error::StaleSequence(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            code => Error::Server { code, message },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Unavailable(format!("transport: {e}"))
    }
}

/// The first decimal number after `marker` in `m`.
fn number_after(m: &str, marker: &str) -> Option<u64> {
    let rest = &m[m.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `stream "s": offset 3 was removed by retention; the first available offset is 10`.
fn retention(m: &str) -> Error {
    let stream = m.split('"').nth(1).map(str::to_string).unwrap_or_default();
    Error::Retention {
        stream,
        offset: number_after(m, "offset ").unwrap_or(0),
        first_available: number_after(m, "first available offset is ").unwrap_or(0),
    }
}

fn is_transport_message(m: &str) -> bool {
    [
        "transport error",
        "connection",
        "broken pipe",
        "h2 protocol error",
        "operation was canceled",
        "error trying to connect",
    ]
    .iter()
    .any(|n| m.to_ascii_lowercase().contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_messages_map_to_meanings() {
        assert_eq!(Error::from(Status::unavailable("etcdserver: not leader")), Error::NotLeader);
        assert_eq!(
            Error::from(Status::out_of_range("etcdserver: mvcc: required revision has been compacted")),
            Error::Compacted { compact_revision: None }
        );
        assert_eq!(
            Error::from(Status::out_of_range("etcdserver: mvcc: required revision is a future revision")),
            Error::FutureRevision
        );
        assert_eq!(
            Error::from(Status::not_found("etcdserver: requested lease not found")),
            Error::LeaseNotFound
        );
        assert_eq!(Error::from(Status::not_found("etcdserver: member not found")), Error::MemberNotFound);
        assert!(matches!(
            Error::from(Status::unavailable(
                "etcdserver: request timed out, possibly due to previous leader failure"
            )),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from(Status::invalid_argument("etcdserver: key is not provided")),
            Error::InvalidArgument(m) if m == "etcdserver: key is not provided"
        ));
        assert!(Error::from(Status::unknown("transport error")).is_retryable());
        assert_eq!(
            Error::from(Status::failed_precondition(
                "balsa: session 42 expired or unknown; register a new session"
            )),
            Error::SessionExpired { client_id: 42 }
        );
        assert!(matches!(
            Error::from(Status::failed_precondition(
                "balsa: sequence number 3 is stale (the session's last is 5)"
            )),
            Error::StaleSequence(_)
        ));
        assert_eq!(
            Error::from(Status::out_of_range(
                "stream \"orders\": offset 3 was removed by retention; the first available offset is 10"
            )),
            Error::Retention { stream: "orders".into(), offset: 3, first_available: 10 }
        );
        assert!(matches!(
            Error::from(Status::not_found("stream \"orders\" not found")),
            Error::StreamNotFound(_)
        ));
        assert!(!Error::from(Status::permission_denied("no")).is_retryable());
    }
}
