//! The gRPC contract between Warren gateways and bridges: the generated
//! `proto::warren::v1::*`, and the [`rules`] both sides apply to its fields.

/// Generated code, one module per protobuf package.
pub mod warren {
    /// Version 1 of the gateway-bridge contract.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("warren.v1");
    }
}

/// Rules of the contract's fields that both sides apply, written once.
pub mod rules {
    use std::time::Duration;

    /// Whether `room` is a room name: `[a-z0-9_-]{1,64}`. Gateways refuse
    /// other names from clients, bridges from gateways.
    pub fn is_valid_room(room: &str) -> bool {
        (1..=64).contains(&room.len())
            && room.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }

    /// How long ago a message's `ts` (ms since the Unix epoch, the bridge's
    /// clock) was; zero for a time ahead of this clock.
    pub fn age_of(ts_millis: i64) -> Duration {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.saturating_sub(Duration::from_millis(u64::try_from(ts_millis).unwrap_or_default()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn room_names() {
            assert!(is_valid_room("lobby"));
            assert!(is_valid_room("a-b_c-9"));
            assert!(is_valid_room(&"x".repeat(64)));
            assert!(!is_valid_room(""));
            assert!(!is_valid_room(&"x".repeat(65)));
            assert!(!is_valid_room("Lobby"));
            assert!(!is_valid_room("lob.by"));
        }

        #[test]
        fn ages_are_never_negative() {
            assert_eq!(age_of(i64::MAX), Duration::ZERO);
            assert!(age_of(0) > Duration::from_secs(50 * 365 * 86_400));
        }
    }
}
