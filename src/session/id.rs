//! Session ids, handles and the keys derived from them.
//!
//! An id is `base64url(user_tag ‖ secret)`: a 64-bit routing tag derived from the tenant and user,
//! then 256 bits from the OS CSPRNG. Only the secret makes it a bearer credential. The store
//! never sees the id: a session is keyed by its [`SessionKey`], the user tag plus the first 128
//! bits of SHA-256 of the whole id, so a dump of the store yields nothing that opens a session.
//!
//! Why the tag: it puts all of a user's sessions and the user's index under one Redis Cluster
//! hash tag, so create-with-eviction, rotation and "log out everywhere" are each one atomic script
//! on one shard, while distinct users still spread across shards (never a whole tenant in one tag).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::tenant::Tenant;

const TAG_LEN: usize = 8;
const SECRET_LEN: usize = 32;
const DIGEST_LEN: usize = 16;
const ID_LEN: usize = TAG_LEN + SECRET_LEN;
/// Length of an encoded session id (54 characters).
pub const ID_CHARS: usize = (ID_LEN * 4).div_ceil(3);
/// Length of an encoded handle (32 characters).
pub const HANDLE_CHARS: usize = ((TAG_LEN + DIGEST_LEN) * 4).div_ceil(3);

/// Routes all of one user's session keys to one hash slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserTag([u8; TAG_LEN]);

impl UserTag {
    /// The tag of `user_id` within `tenant` (the tenant is mixed in so tags do not correlate
    /// users across tenants).
    pub fn for_user(tenant: &Tenant, user_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(tenant.as_str().as_bytes());
        h.update([0]);
        h.update(user_id.as_bytes());
        let digest = h.finalize();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&digest[..TAG_LEN]);
        Self(tag)
    }

    /// The tag as it appears inside store keys (11 URL-safe characters).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// A session's secret bearer id.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; ID_LEN]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, even in debug logs.
        write!(f, "SessionId({})", self.key().handle())
    }
}

impl SessionId {
    /// A fresh id for a session of the user with `tag`, 256 bits of it from the OS CSPRNG.
    pub fn generate(tag: UserTag) -> Self {
        let mut bytes = [0; ID_LEN];
        bytes[..TAG_LEN].copy_from_slice(&tag.0);
        // ThreadRng is ChaCha12 seeded from the OS and reseeded periodically: a CSPRNG.
        rand::rng().fill_bytes(&mut bytes[TAG_LEN..]);
        Self(bytes)
    }

    /// Parses an encoded id; `None` when it is not exactly an id's shape.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != ID_CHARS {
            return None;
        }
        let mut bytes = [0; ID_LEN];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut bytes) {
            Ok(ID_LEN) => Some(Self(bytes)),
            _ => None,
        }
    }

    /// The id as given to the client (54 URL-safe characters).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The user tag the id was minted with.
    pub fn tag(&self) -> UserTag {
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&self.0[..TAG_LEN]);
        UserTag(tag)
    }

    /// The store key of this session: user tag plus a truncated SHA-256 of the whole id.
    pub fn key(&self) -> SessionKey {
        let digest = Sha256::digest(self.0);
        let mut d = [0; DIGEST_LEN];
        d.copy_from_slice(&digest[..DIGEST_LEN]);
        SessionKey {
            tag: self.tag(),
            digest: d,
        }
    }
}

/// Where a session lives in the store; its encoding is the session's public handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    tag: UserTag,
    digest: [u8; DIGEST_LEN],
}

impl SessionKey {
    /// The user tag (hash slot) of the session.
    pub fn tag(&self) -> UserTag {
        self.tag
    }

    /// The digest part as it appears in store keys and index members (22 characters).
    pub fn member(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.digest)
    }

    /// Rebuilds a key from the tag and an index member; `None` if the member is malformed.
    pub fn from_member(tag: UserTag, member: &str) -> Option<Self> {
        let mut digest = [0; DIGEST_LEN];
        match URL_SAFE_NO_PAD.decode_slice(member, &mut digest) {
            Ok(DIGEST_LEN) => Some(Self { tag, digest }),
            _ => None,
        }
    }

    /// The non-secret handle: enough to find and delete the session, useless to read it.
    pub fn handle(&self) -> String {
        let mut bytes = [0; TAG_LEN + DIGEST_LEN];
        bytes[..TAG_LEN].copy_from_slice(&self.tag.0);
        bytes[TAG_LEN..].copy_from_slice(&self.digest);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a handle; `None` when it is not exactly a handle's shape.
    pub fn parse_handle(s: &str) -> Option<Self> {
        if s.len() != HANDLE_CHARS {
            return None;
        }
        let mut bytes = [0; TAG_LEN + DIGEST_LEN];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut bytes) {
            Ok(n) if n == TAG_LEN + DIGEST_LEN => {
                let mut tag = [0; TAG_LEN];
                tag.copy_from_slice(&bytes[..TAG_LEN]);
                let mut digest = [0; DIGEST_LEN];
                digest.copy_from_slice(&bytes[TAG_LEN..]);
                Some(Self {
                    tag: UserTag(tag),
                    digest,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_url_safe() {
        let tag = UserTag::for_user(&Tenant::default_tenant(), "alice");
        let id = SessionId::generate(tag);
        let s = id.encode();
        assert_eq!(s.len(), ID_CHARS);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let parsed = SessionId::parse(&s).expect("parses");
        assert_eq!(parsed, id);
        assert_eq!(parsed.tag(), tag);
    }

    #[test]
    fn ids_are_unique_and_keys_hide_the_secret() {
        let tag = UserTag::for_user(&Tenant::default_tenant(), "alice");
        let a = SessionId::generate(tag);
        let b = SessionId::generate(tag);
        assert_ne!(a, b);
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key().tag(), b.key().tag());
        let secret_part = &a.encode()[12..];
        assert!(!a.key().handle().contains(secret_part));
        assert!(!format!("{a:?}").contains(secret_part));
    }

    #[test]
    fn handles_round_trip() {
        let id = SessionId::generate(UserTag::for_user(&Tenant::default_tenant(), "bob"));
        let key = id.key();
        let handle = key.handle();
        assert_eq!(handle.len(), HANDLE_CHARS);
        assert_eq!(SessionKey::parse_handle(&handle), Some(key));
        assert_eq!(SessionKey::from_member(key.tag(), &key.member()), Some(key));
    }

    #[test]
    fn malformed_ids_and_handles_are_rejected() {
        let id = SessionId::generate(UserTag::for_user(&Tenant::default_tenant(), "x")).encode();
        for bad in [
            "",
            "abc",
            &id[1..],
            &format!("{id}A"),
            &id.replace(&id[..1], "!"),
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(SessionKey::parse_handle("not-a-handle").is_none());
        assert!(SessionKey::parse_handle(&id).is_none());
    }

    #[test]
    fn user_tags_depend_on_tenant_and_user() {
        let t1 = Tenant::default_tenant();
        let t2 = Tenant::new("other").expect("valid");
        assert_ne!(UserTag::for_user(&t1, "u"), UserTag::for_user(&t2, "u"));
        assert_ne!(UserTag::for_user(&t1, "u"), UserTag::for_user(&t1, "v"));
    }
}
