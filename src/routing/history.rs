//! A room's bounded history, kept by the room's owner: the last messages by count, age and
//! bytes, as encoded event frames ready to send.
//!
//! History serves three things: `join` with `since` (resume with no gap at the seam),
//! the `history` op, and a member node's resync after it saw a gap in its feed.

use std::collections::VecDeque;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

/// Limits on one room's history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_messages: usize,
    pub max_age_ms: u64,
    pub max_bytes: usize,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistEntry {
    pub seq: u64,
    /// When the owner accepted it, unix microseconds.
    pub accepted_us: u64,
    /// The encoded event frame.
    pub frame: ByteString,
}

/// The history ring of one room.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<HistEntry>,
    bytes: usize,
}

/// What a read from history found.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Entries with seq > since, oldest first (possibly capped by a limit).
    pub entries: Vec<HistEntry>,
    /// False when history no longer reaches `since + 1` (messages in between are gone).
    pub recovered: bool,
}

impl History {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends `entry` (its seq must follow the last one) and trims to the count and byte limits.
    pub fn push(&mut self, entry: HistEntry, limits: &HistoryLimits) {
        self.bytes += entry.frame.len();
        self.entries.push_back(entry);
        while self.entries.len() > limits.max_messages
            || (self.bytes > limits.max_bytes && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.frame.len();
        }
    }

    /// Takes every entry out, oldest first (to hand the room to another owner).
    pub fn drain(self) -> Vec<HistEntry> {
        self.entries.into()
    }

    /// A copy of every entry, oldest first (to send a replica the room).
    pub fn to_vec(&self) -> Vec<HistEntry> {
        self.entries.iter().cloned().collect()
    }

    /// The entries after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &HistEntry> {
        self.entries.iter().filter(move |e| e.seq > seq)
    }

    /// Drops entries older than the age limit.
    pub fn expire(&mut self, now_us: u64, limits: &HistoryLimits) {
        let cutoff = now_us.saturating_sub(limits.max_age_ms.saturating_mul(1000));
        while self.entries.front().is_some_and(|e| e.accepted_us < cutoff) {
            self.pop_front();
        }
    }

    /// Entries after `since` up to `last_seq`, at most `limit` of them (the oldest ones), given
    /// that the room's last seq that may be read is `last_seq` (later entries are sequenced
    /// but not committed yet, and are not shown).
    pub fn since(&self, since: u64, last_seq: u64, limit: usize) -> Slice {
        if since >= last_seq {
            // Nothing newer. A `since` beyond the last seq means the caller followed another
            // sequence (an earlier epoch): not recovered.
            return Slice {
                entries: Vec::new(),
                recovered: since == last_seq,
            };
        }
        let first = match self.entries.front() {
            Some(e) => e.seq,
            None => {
                return Slice {
                    entries: Vec::new(),
                    recovered: false,
                };
            }
        };
        let recovered = first <= since + 1;
        // Entries are contiguous, so the index of seq s is s - first.
        let start = (since + 1).saturating_sub(first) as usize;
        let entries = self
            .entries
            .iter()
            .skip(start)
            .take_while(|e| e.seq <= last_seq)
            .take(limit)
            .cloned()
            .collect();
        Slice { entries, recovered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: HistoryLimits = HistoryLimits {
        max_messages: 3,
        max_age_ms: 1000,
        max_bytes: 1 << 20,
    };

    fn e(seq: u64, at_ms: u64) -> HistEntry {
        HistEntry {
            seq,
            accepted_us: at_ms * 1000,
            frame: ByteString::from(format!("m{seq}")),
        }
    }

    fn seqs(s: &Slice) -> Vec<u64> {
        s.entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn bounded_by_count() {
        let mut h = History::default();
        for i in 1..=5 {
            h.push(e(i, 0), &LIM);
        }
        assert_eq!(h.len(), 3);
        let s = h.since(2, 5, 100);
        assert_eq!((seqs(&s), s.recovered), (vec![3, 4, 5], true));
        let s = h.since(1, 5, 100);
        assert_eq!((seqs(&s), s.recovered), (vec![3, 4, 5], false));
        let s = h.since(3, 5, 1);
        assert_eq!((seqs(&s), s.recovered), (vec![4], true));
        let s = h.since(5, 5, 100);
        assert_eq!((seqs(&s), s.recovered), (vec![], true));
        let s = h.since(9, 5, 100);
        assert!(!s.recovered);
    }

    #[test]
    fn bounded_by_age_and_bytes() {
        let mut h = History::default();
        h.push(e(1, 0), &LIM);
        h.push(e(2, 600), &LIM);
        h.expire(1_500_000, &LIM);
        assert_eq!(seqs(&h.since(0, 2, 10)), vec![2]);
        h.expire(10_000_000, &LIM);
        assert!(h.is_empty());
        let s = h.since(0, 2, 10);
        assert!(!s.recovered);
        let tiny = HistoryLimits {
            max_bytes: 5,
            ..LIM
        };
        let mut h = History::default();
        h.push(e(1, 0), &tiny);
        h.push(e(2, 0), &tiny);
        h.push(e(3, 0), &tiny);
        assert_eq!(seqs(&h.since(0, 3, 10)), vec![2, 3]);
    }
}
