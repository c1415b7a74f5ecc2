//! Exactly-once display over at-least-once delivery (docs/protocol.md §2.3): per
//! channel, the seqs already shown. Pure, so the rules are unit-tested.

use natter_protocol::Seq;
use std::collections::BTreeSet;

/// The seqs of one channel the user has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Every seq up to and including this one has been seen.
    contiguous: Seq,
    /// Seen seqs above `contiguous` (the user's own writes can land before
    /// the pushes of the messages just before them).
    ahead: BTreeSet<Seq>,
}

/// What to do with a message of a given seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Seen before: drop it.
    Duplicate,
    /// The next one: show it.
    Next,
    /// Newer than a missing one: fetch the messages after `after_seq`
    /// first.
    Gap {
        /// The last seq with nothing missing before it.
        after_seq: Seq,
    },
}

impl SeqTracker {
    /// A tracker for which everything up to `seq` is seen.
    #[must_use]
    pub fn starting_at(seq: Seq) -> Self {
        Self {
            contiguous: seq,
            ahead: BTreeSet::new(),
        }
    }

    /// Every seq up to this one has been seen.
    #[must_use]
    pub fn contiguous(&self) -> Seq {
        self.contiguous
    }

    /// The highest seq seen.
    #[must_use]
    pub fn highest(&self) -> Seq {
        self.ahead.last().copied().unwrap_or(self.contiguous)
    }

    /// Classifies `seq` without recording it.
    #[must_use]
    pub fn verdict(&self, seq: Seq) -> Verdict {
        if self.is_seen(seq) {
            Verdict::Duplicate
        } else if self.missing_before(seq) {
            Verdict::Gap {
                after_seq: self.contiguous,
            }
        } else {
            Verdict::Next
        }
    }

    /// Whether `seq` was seen.
    #[must_use]
    pub fn is_seen(&self, seq: Seq) -> bool {
        seq <= self.contiguous || self.ahead.contains(&seq)
    }

    /// Records `seq` as seen; true when it was new.
    pub fn mark(&mut self, seq: Seq) -> bool {
        if self.is_seen(seq) {
            return false;
        }
        self.ahead.insert(seq);
        while self.ahead.remove(&self.contiguous.next()) {
            self.contiguous = self.contiguous.next();
        }
        true
    }

    /// Whether some seq below `seq` is neither seen nor `seq` itself.
    fn missing_before(&self, seq: Seq) -> bool {
        let between = seq.count_after(self.contiguous) - 1;
        let seen_between = self.ahead.range(..seq).count();
        i64::try_from(seen_between).map_or(true, |seen| seen < between)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_seq_is_shown_and_a_repeat_is_dropped() {
        let mut t = SeqTracker::starting_at(Seq(4));
        assert_eq!(t.verdict(Seq(5)), Verdict::Next);
        assert!(t.mark(Seq(5)));
        assert_eq!(t.verdict(Seq(5)), Verdict::Duplicate);
        assert_eq!(t.verdict(Seq(3)), Verdict::Duplicate);
        assert!(!t.mark(Seq(5)));
        assert_eq!(t.contiguous(), Seq(5));
    }

    #[test]
    fn a_jump_is_a_gap_to_fill_after_the_last_contiguous_seq() {
        let t = SeqTracker::starting_at(Seq(4));
        assert_eq!(t.verdict(Seq(7)), Verdict::Gap { after_seq: Seq(4) });
    }

    #[test]
    fn own_writes_ahead_do_not_count_as_gaps() {
        let mut t = SeqTracker::starting_at(Seq(4));
        assert!(t.mark(Seq(6)));
        assert_eq!(t.contiguous(), Seq(4));
        assert_eq!(t.highest(), Seq(6));
        assert_eq!(t.verdict(Seq(5)), Verdict::Next);
        assert_eq!(t.verdict(Seq(7)), Verdict::Gap { after_seq: Seq(4) });
        assert!(t.mark(Seq(5)));
        assert_eq!(t.contiguous(), Seq(6));
        assert_eq!(t.verdict(Seq(7)), Verdict::Next);
    }

    #[test]
    fn an_empty_channel_starts_at_zero() {
        let t = SeqTracker::default();
        assert_eq!(t.verdict(Seq(1)), Verdict::Next);
        assert_eq!(t.verdict(Seq(2)), Verdict::Gap { after_seq: Seq(0) });
    }
}
