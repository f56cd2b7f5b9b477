//! Storage errors. Each names the file (and offset) involved, so an operator can find it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a storage operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Syncing failed. The page cache may have dropped the data, so the state on disk is unknown:
    /// the process must stop, never retry and continue (fsyncgate).
    #[error("fsync of {path} failed, the store is unusable and the process must stop: {source}")]
    SyncFailed {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A record failed its checksum or framing before the tail of the log, or a snapshot failed
    /// verification: data the store acknowledged is damaged.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment the log needs is missing (a gap in indexes).
    #[error("missing log segment before {path}: entries {expected} to {found} are absent")]
    MissingSegment {
        /// The first segment after the gap.
        path: PathBuf,
        /// The index that should have come next.
        expected: u64,
        /// The index the next segment starts at.
        found: u64,
    },
    /// The disk is full. Nothing acknowledged was lost; the write that failed was not.
    #[error("no space left on device writing {path}; the last write was not made durable")]
    NoSpace {
        /// The file.
        path: PathBuf,
    },
    /// An earlier fatal error (failed sync) poisoned the store.
    #[error("the store stopped after an earlier fatal error")]
    Poisoned,
    /// The caller asked for something the log cannot give.
    #[error("entry {index} is not in the log (first {first}, last {last})")]
    OutOfRange {
        /// Requested index.
        index: u64,
        /// First index held.
        first: u64,
        /// Last index held.
        last: u64,
    },
    /// The caller broke the contract (e.g. a gap in appended entries).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl StorageError {
    /// Wraps an I/O error, recognising a full disk.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(28) || source.kind() == io::ErrorKind::StorageFull {
            return Self::NoSpace { path };
        }
        Self::Io { op, path, source }
    }

    /// Whether the process must stop (the store can no longer be trusted).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::SyncFailed { .. } | Self::Poisoned | Self::Corrupt { .. } | Self::MissingSegment { .. }
        )
    }
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, StorageError>;
