//! Validation of session requests against the policy: every violation is reported at once,
//! each naming its request field.

use super::{
    config::SessionConfig,
    id::{self, SessionId, SessionKey},
    model::CreateSession,
};
use crate::{
    error::{Error, Violation},
    time::{Millis, duration_ms},
};

/// Checks a CreateSession request against the policy; returns the (idle, absolute) timeouts in
/// ms to use. Every violation is reported at once, each naming its field.
pub fn validate_create(p: &SessionConfig, req: &CreateSession) -> Result<(Millis, Millis), Error> {
    let mut bad = Vec::new();
    check_user_id(&req.user_id, p, &mut bad);
    check_fields(
        "data",
        req.data.iter().map(|(k, v)| (k.as_str(), v.len())),
        p.max_fields.get(),
        p.max_field_name_bytes.get(),
        p.max_data_bytes.get(),
        &mut bad,
    );
    check_fields(
        "metadata",
        req.metadata.iter().map(|(k, v)| (k.as_str(), v.len())),
        p.max_fields.get(),
        p.max_field_name_bytes.get(),
        p.max_metadata_bytes.get(),
        &mut bad,
    );
    let max = duration_ms(p.max_timeout);
    let idle = check_timeout(
        "idle_timeout",
        req.idle_timeout,
        p.idle_timeout.get(),
        max,
        &mut bad,
    );
    let absolute = check_timeout(
        "absolute_timeout",
        req.absolute_timeout,
        p.absolute_timeout.get(),
        max,
        &mut bad,
    );
    if bad.is_empty() {
        Ok((idle, absolute))
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

pub(super) fn parse_id(id: &str) -> Result<SessionId, Violation> {
    SessionId::parse(id).ok_or_else(|| {
        Violation::new(
            "id",
            if id.is_empty() {
                "must not be empty".to_owned()
            } else {
                format!(
                    "not a session id (expected {} URL-safe base64 characters)",
                    id::ID_CHARS
                )
            },
        )
    })
}

pub(super) fn parse_handle(field: &str, handle: &str) -> Result<SessionKey, Violation> {
    SessionKey::parse_handle(handle).ok_or_else(|| {
        Violation::new(
            field,
            format!(
                "not a session handle (expected {} URL-safe base64 characters)",
                id::HANDLE_CHARS
            ),
        )
    })
}

pub(super) fn check_user_id(user_id: &str, p: &SessionConfig, bad: &mut Vec<Violation>) {
    if user_id.is_empty() {
        bad.push(Violation::new("user_id", "must not be empty"));
    } else if user_id.len() > p.max_user_id_bytes.get() {
        bad.push(Violation::new(
            "user_id",
            format!("longer than {} bytes", p.max_user_id_bytes),
        ));
    }
}

/// Checks a map of named fields: count, name length, total size (names plus values).
pub(super) fn check_fields<'a>(
    field: &str,
    entries: impl ExactSizeIterator<Item = (&'a str, usize)>,
    max_fields: usize,
    max_name: usize,
    max_bytes: usize,
    bad: &mut Vec<Violation>,
) {
    if entries.len() > max_fields {
        bad.push(Violation::new(
            field,
            format!(
                "{} fields, more than the limit of {max_fields}",
                entries.len()
            ),
        ));
        return;
    }
    // Violations name the map, never the offending field name: request content is not echoed.
    let (mut empty, mut long, mut total) = (false, false, 0usize);
    for (name, value_len) in entries {
        empty |= name.is_empty();
        long |= name.len() > max_name;
        total = total.saturating_add(name.len()).saturating_add(value_len);
    }
    if empty {
        bad.push(Violation::new(field, "field names must not be empty"));
    }
    if long {
        bad.push(Violation::new(
            field,
            format!("a field name is longer than {max_name} bytes"),
        ));
    }
    if total > max_bytes {
        bad.push(Violation::new(
            field,
            format!("{total} bytes, more than the limit of {max_bytes}"),
        ));
    }
}

fn check_timeout(
    field: &str,
    requested: Option<Millis>,
    default: std::time::Duration,
    max: Millis,
    bad: &mut Vec<Violation>,
) -> Millis {
    match requested {
        None => duration_ms(default),
        Some(ms) if ms <= 0 => {
            bad.push(Violation::new(field, "must be positive"));
            0
        }
        Some(ms) if ms > max => {
            bad.push(Violation::new(
                field,
                format!("longer than the limit of {max} ms (session.max_timeout)"),
            ));
            0
        }
        Some(ms) => ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_checks_name_the_field() {
        let mut bad = Vec::new();
        let big = "x".repeat(11);
        check_fields(
            "data",
            [("", 1), (big.as_str(), 1)].into_iter(),
            5,
            10,
            100,
            &mut bad,
        );
        assert_eq!(bad.len(), 2);
        assert_eq!(
            (bad[0].field.as_str(), bad[1].field.as_str()),
            ("data", "data")
        );
        assert!(!bad[1].description.contains(&big), "the name is not echoed");
        bad.clear();
        check_fields("data", [("a", 200)].into_iter(), 5, 10, 100, &mut bad);
        assert_eq!(bad[0].field, "data");
    }
}
