//! Configuration values that cannot hold a bad value: [`PositiveDuration`] for a duration that
//! must be greater than zero, and [`nonzero!`] for the defaults of the `NonZero…` integers.
//!
//! A key typed this way is refused by the loader itself, with the key and where its value came
//! from ("invalid value: string \"0s\", expected a duration greater than zero for key
//! `rls.reload_interval` (from environment variable FLOWSTATE_RLS__RELOAD_INTERVAL)"), and the
//! code that reads it needs no check and no fallback for a zero. Its serialized form is the
//! plain one (`"2s"`, `64`), so the effective configuration (`flowstate config`) and the
//! reference in docs/configuration.md read the same.
//!
//! The loader stops at the first value it refuses, where the hand checks of `validate` name
//! every bad value at once: a key with a bound beyond "not zero" (`locks.max_ttl` at least
//! 10ms), or one that is checked only when another is set (`tracing.export_timeout`), keeps
//! its hand check.

use std::{fmt, num::NonZeroU64, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A non-zero integer literal, checked when the program is compiled (`nonzero!(64)` for a
/// default of a `NonZeroUsize` key: a zero there does not build, so no default can panic).
macro_rules! nonzero {
    ($n:expr) => {
        const {
            match ::std::num::NonZero::new($n) {
                Some(n) => n,
                None => panic!("a configuration default must not be zero"),
            }
        }
    };
}
pub(crate) use nonzero;

/// A duration greater than zero, written like every duration of the configuration (`500ms`,
/// `2s`, `1h 30m`: humantime's format).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PositiveDuration(Duration);

impl PositiveDuration {
    /// `d`, unless it is zero.
    pub const fn new(d: Duration) -> Option<Self> {
        if d.is_zero() { None } else { Some(Self(d)) }
    }

    /// `secs` seconds.
    pub const fn from_secs(secs: NonZeroU64) -> Self {
        Self(Duration::from_secs(secs.get()))
    }

    /// `ms` milliseconds.
    pub const fn from_millis(ms: NonZeroU64) -> Self {
        Self(Duration::from_millis(ms.get()))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<PositiveDuration> for Duration {
    fn from(d: PositiveDuration) -> Self {
        d.0
    }
}

/// As the `Duration` it holds, so a configuration's `{:?}` reads as before.
impl fmt::Debug for PositiveDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PositiveDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl Serialize for PositiveDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = PositiveDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration greater than zero")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v)
                    .ok()
                    .and_then(PositiveDuration::new)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }

        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Plain {
        #[serde(with = "humantime_serde")]
        d: Duration,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Typed {
        d: PositiveDuration,
    }

    #[test]
    fn serializes_as_a_plain_duration_and_refuses_zero() {
        for d in [Duration::from_millis(1), Duration::from_secs(5400)] {
            let plain = serde_json::to_string(&Plain { d }).expect("plain");
            let typed = PositiveDuration::new(d).expect("positive");
            assert_eq!(
                serde_json::to_string(&Typed { d: typed }).expect("typed"),
                plain
            );
            let back: Typed = serde_json::from_str(&plain).expect("reads back");
            assert_eq!(back.d.get(), d);
        }
        for zero in ["0s", "0ms", "nope"] {
            let err = serde_json::from_str::<Typed>(&format!("{{\"d\": \"{zero}\"}}"))
                .expect_err("refused")
                .to_string();
            assert!(
                err.contains("expected a duration greater than zero"),
                "{err}"
            );
        }
        assert!(PositiveDuration::new(Duration::ZERO).is_none());
        let n: NonZeroUsize = nonzero!(64);
        assert_eq!(n.get(), 64);
    }
}
