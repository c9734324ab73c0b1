//! Secrets that identify a holding: a lock's grant, a job's lease.
//!
//! A token is 256 random bits, returned once to the holder; the store knows the holding only
//! by its public id (the first 128 bits of the token's SHA-256), so neither a listing (lock
//! Inspect) nor a dump of Redis yields a token that could act on someone else's holding.

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// A new token (URL-safe base64 of 32 random bytes).
pub fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The public id of the holding `token` identifies.
pub fn public_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    hex::encode(&digest[..16])
}
