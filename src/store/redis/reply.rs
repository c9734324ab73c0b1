//! Reading Redis replies. Errors describe the shape that was expected, never the reply itself:
//! replies hold user data (session fields, cache values) that must not reach logs or callers.

use redis::Value;

use crate::store::StoreError;

/// A short name for a reply's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "integer",
        Value::BulkString(_) => "bulk string",
        Value::Array(_) => "array",
        Value::SimpleString(_) => "simple string",
        Value::Okay => "OK",
        Value::Map(_) => "map",
        Value::Attribute { .. } => "attribute",
        Value::Set(_) => "set",
        Value::Double(_) => "double",
        Value::Boolean(_) => "boolean",
        Value::VerbatimString { .. } => "verbatim string",
        Value::BigNumber(_) => "big number",
        Value::Push { .. } => "push",
        Value::ServerError(_) => "error",
        _ => "unknown",
    }
}

/// An error naming what `what` returned instead of what was expected.
pub fn unexpected(what: &str, expected: &str, got: &Value) -> StoreError {
    StoreError::Protocol(format!("{what}: expected {expected}, got {}", kind(got)))
}

/// An integer reply.
pub fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(unexpected("reply", "an integer", other)),
    }
}

/// A non-negative integer reply; `what` names the reply in the error.
pub fn u64_of(v: &Value, what: &str) -> Result<u64, StoreError> {
    u64::try_from(int(v)?).map_err(|_| StoreError::Protocol(format!("negative number in {what}")))
}

/// A count that fits 32 bits; `what` names the reply in the error.
pub fn u32_of(v: &Value, what: &str) -> Result<u32, StoreError> {
    u32::try_from(int(v)?)
        .map_err(|_| StoreError::Protocol(format!("count out of range in {what}")))
}

/// A UTF-8 string from bytes.
pub fn utf8(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Protocol("non-UTF-8 string in a reply".into()))
}

/// A bulk string reply as UTF-8.
pub fn string(v: Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => utf8(b),
        other => Err(unexpected("reply", "a string", &other)),
    }
}

/// An integer reply, or a bulk string holding one (what HGET, ZSCORE and numbers a script
/// formatted return; a sorted-set score of a whole number reads as one); `what` names the reply.
pub fn number(v: &Value, what: &str) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => parse_int(b)
            .or_else(|| {
                let f: f64 = std::str::from_utf8(b).ok()?.parse().ok()?;
                (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
            })
            .ok_or_else(|| StoreError::Protocol(format!("{what}: not a whole number"))),
        other => Err(unexpected(what, "a number", other)),
    }
}

/// A bulk string holding a decimal integer.
pub fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_carry_the_reply() {
        let secret = Value::BulkString(b"session-secret-data".to_vec());
        for e in [int(&secret).unwrap_err(), unexpected("x", "y", &secret)] {
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        let e = string(Value::Array(vec![secret])).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
