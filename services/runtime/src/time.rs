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

pub fn from_timestamp(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_including_before_epoch() {
        for ms in [0, 1, 999, 1_764_300_000_123, -1, -1500] {
            assert_eq!(from_timestamp(&to_timestamp(ms)), ms);
        }
    }
}
