//! What the checker says: [`Verdict`] and, for a violation, a readable [`Counterexample`].

use std::fmt;

/// The answer of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists (every operation with a known outcome is placed).
    Ok,
    /// No linearization exists; the counterexample shows where the search got stuck.
    Illegal(Counterexample),
    /// The check could not decide: the budget ran out, or the history was malformed. Never
    /// read this as "ok".
    Unknown { reason: String },
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, Verdict::Illegal(_))
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Verdict::Unknown { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => write!(f, "ok: the history is linearizable"),
            Verdict::Illegal(counterexample) => write!(f, "illegal: {counterexample}"),
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// One operation named in a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRef {
    /// Its position in the history given to the check.
    pub index: usize,
    /// The model's rendering of it ([`crate::Model::describe`]).
    pub text: String,
}

/// Why a history is not linearizable, as far as the search can tell.
///
/// The search is exhaustive, so "the longest linearizable prefix" is the deepest point any
/// ordering reached; the operations in `stuck` are those that could have come next there, and
/// none could (each either contradicts the model's state or leads only to dead ends already
/// explored). The culprit is usually among them — for a stale read, the read itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// What went wrong, in one line.
    pub summary: String,
    /// Which partition (in the order the model's `partition` returned them) failed; `None` for
    /// a check over the whole history (such as [`crate::etcd::check_revisions`]).
    pub partition: Option<usize>,
    /// How many operations that partition holds.
    pub partition_len: usize,
    /// The longest linearizable prefix found, in linearization order.
    pub prefix: Vec<OpRef>,
    /// The operations that could come next after `prefix`; none could be placed.
    pub stuck: Vec<OpRef>,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.partition {
            Some(p) => writeln!(f, "{} (partition {p}, {} operations)", self.summary, self.partition_len)?,
            None => writeln!(f, "{} ({} operations)", self.summary, self.partition_len)?,
        }
        // The tail of the prefix is what explains the state the stuck operations met.
        const SHOWN: usize = 10;
        let skipped = self.prefix.len().saturating_sub(SHOWN);
        writeln!(
            f,
            "  before it: {} operations{}",
            self.prefix.len(),
            if skipped > 0 { format!(", the last {SHOWN}:") } else { ":".to_string() }
        )?;
        for op in &self.prefix[skipped..] {
            writeln!(f, "    #{} {}", op.index, op.text)?;
        }
        writeln!(f, "  then none of these could take effect next:")?;
        for op in &self.stuck {
            writeln!(f, "    #{} {}", op.index, op.text)?;
        }
        Ok(())
    }
}
