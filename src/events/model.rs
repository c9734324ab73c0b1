//! Event ids and events.

use std::{fmt, str::FromStr, sync::Arc};

use bytes::Bytes;

/// A position in a topic: `<ms>-<seq>`, as Redis Streams number entries (the store's clock,
/// then a sequence within the millisecond). `0-0` is before every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Store time of the event, Unix ms.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// Before every event.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// The id just before this one (a position from which a read starts at this event).
    pub fn before(self) -> EventId {
        match (self.ms, self.seq) {
            (0, 0) => EventId::ZERO,
            (ms, 0) => EventId {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => EventId { ms, seq: seq - 1 },
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ();

    /// `<ms>-<seq>`, or `<ms>` alone (sequence 0).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(());
        }
        Ok(EventId {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its position.
    pub id: EventId,
    /// Opaque payload.
    pub payload: Bytes,
    /// The publisher's optional key.
    pub key: String,
}

/// An event with its topic, shared by every local subscriber of the topic (fan-out clones the
/// `Arc`, not the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEvent {
    /// The topic.
    pub topic: Arc<str>,
    /// The event.
    pub event: StoredEvent,
}

/// What a read of a topic found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Events after the position read from, oldest first.
    pub events: Vec<StoredEvent>,
    /// Whether events after the position are gone (trimmed by retention, or the topic was
    /// forgotten and made anew): the batch then starts at the oldest event kept.
    pub gap: bool,
    /// The oldest event the topic holds, if any.
    pub first: Option<EventId>,
    /// The last id the topic gave out (`0-0` when it holds nothing).
    pub last: EventId,
}

/// How much history a topic keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most events kept.
    pub max_len: u64,
    /// Longest age kept, ms (a topic nobody publishes on or reads is forgotten after twice
    /// this).
    pub max_age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_order_like_redis_stream_ids() {
        let a: EventId = "1700000000000-3".parse().expect("id");
        assert_eq!(a.to_string(), "1700000000000-3");
        assert_eq!("17".parse::<EventId>(), Ok(EventId { ms: 17, seq: 0 }));
        assert!(a < "1700000000000-10".parse().expect("id"));
        assert!(a > "1699999999999-99".parse().expect("id"));
        for bad in ["", "-", "1-", "-1", "a-1", "1-2-3", "1 -2", "+", "$"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }
}
