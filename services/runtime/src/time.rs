//! Time on the wire is `google.protobuf.Timestamp`; in the databases it is epoch milliseconds
//! (a BIGINT), which both SQLite and PostgreSQL store and compare the same way.

use prost_types::Timestamp;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn to_timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn opt_timestamp(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(to_timestamp)
}

/// The farthest a time may be from 1970, in milliseconds (about 31,700 years either way): a
/// client's timestamp is clamped to it, so that adding days or subtracting two times can never
/// overflow.
pub const MAX_TIME_MS: i64 = 1_000_000_000_000_000;

pub fn from_timestamp(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos / 1_000_000))
        .clamp(-MAX_TIME_MS, MAX_TIME_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_including_before_epoch() {
        for ms in [0, 1, 999, 1_764_300_000_123, -1, -1500] {
            assert_eq!(from_timestamp(&to_timestamp(ms)), ms);
        }
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        assert_eq!(from_timestamp(&far), MAX_TIME_MS);
        assert!(from_timestamp(&far).checked_add(365 * 86_400_000).is_some());
    }
}
