//! Usage types shared by the domain, its store contract and both stores (a leaf module), and
//! the bucket arithmetic `lua/buckets.lua` mirrors.

use crate::time::Millis;

const DAY: Millis = 86_400_000;

/// A bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
    /// One calendar month (UTC).
    Month,
}

impl Granularity {
    /// Every granularity, finest first (the order of the retention arguments of the scripts).
    pub const ALL: [Granularity; 4] = [
        Granularity::Minute,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Month,
    ];

    /// The letter in key names (`m`, `h`, `d`, `M`).
    pub fn code(self) -> &'static str {
        match self {
            Granularity::Minute => "m",
            Granularity::Hour => "h",
            Granularity::Day => "d",
            Granularity::Month => "M",
        }
    }

    /// The index of the bucket holding `ms` (Unix milliseconds).
    pub fn index(self, ms: Millis) -> i64 {
        match self {
            Granularity::Minute => ms.div_euclid(60_000),
            Granularity::Hour => ms.div_euclid(3_600_000),
            Granularity::Day => ms.div_euclid(DAY),
            Granularity::Month => {
                let (y, m, _) = civil_from_days(ms.div_euclid(DAY));
                y * 12 + m - 1
            }
        }
    }

    /// When bucket `index` starts (Unix milliseconds).
    pub fn start(self, index: i64) -> Millis {
        match self {
            Granularity::Minute => index.saturating_mul(60_000),
            Granularity::Hour => index.saturating_mul(3_600_000),
            Granularity::Day => index.saturating_mul(DAY),
            Granularity::Month => {
                let (y, m) = (index.div_euclid(12), index.rem_euclid(12) + 1);
                days_from_civil(y, m, 1).saturating_mul(DAY)
            }
        }
    }

    /// A bucket's nominal length (a month: 31 days, an upper bound).
    pub fn max_len_ms(self) -> Millis {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => DAY,
            Granularity::Month => 31 * DAY,
        }
    }
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days from 1970-01-01 to (year, month, day).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One metric's usage by one subject in one Record, summed: the store adds it in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectUsage {
    /// The metric.
    pub metric: String,
    /// The subject.
    pub subject: String,
    /// `_` (the total) and `dimension=value` fields with their amounts.
    pub fields: Vec<(String, i64)>,
    /// Unique values to count once per bucket.
    pub uniques: Vec<String>,
}

/// The buckets `first..=last` of `granularity` of one metric and subject.
#[derive(Debug, Clone, Copy)]
pub struct Buckets<'a> {
    /// The metric.
    pub metric: &'a str,
    /// The subject.
    pub subject: &'a str,
    /// The bucket size.
    pub granularity: Granularity,
    /// The first bucket's index.
    pub first: i64,
    /// The last bucket's index.
    pub last: i64,
}

/// What a Query reads from each bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// One field: `_` or `dimension=value`.
    Field(String),
    /// Every `dimension=…` field of one dimension.
    Group(String),
    /// The distinct count of unique values.
    Unique,
}

/// What a Query read: per bucket of the range, (field, value) pairs; with [`Read::Unique`], the
/// distinct count over the whole range too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucketed {
    /// Per bucket, in order.
    pub buckets: Vec<Vec<(String, i64)>>,
    /// Distinct unique values over every bucket.
    pub distinct: Option<i64>,
}

/// The top index is split over this many shards (by subject), so that a busy metric is not
/// one hot key (one hash slot) on a Cluster. Changing it would scatter existing indexes.
pub const TOP_SHARDS: u16 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_months_round_trip() {
        // 2024-02-29 12:00 UTC.
        let leap = 1_709_208_000_000;
        let i = Granularity::Month.index(leap);
        assert_eq!(i, 2024 * 12 + 1);
        assert_eq!(Granularity::Month.start(i), 1_706_745_600_000, "2024-02-01");
        assert_eq!(
            Granularity::Month.start(i + 1),
            1_709_251_200_000,
            "2024-03-01"
        );
        for day in [-1000, 0, 59, 365, 11_016, 19_782, 30_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(Granularity::Minute.index(-1), -1, "before 1970 still works");
    }
}
