//! API keys: their format, their hashes, and the keys file that lists them.
//!
//! A key is `fs_<id>_<secret>`: a 12-character public id (it names the key in logs and finds
//! its entry without a scan) and 256 bits from the OS CSPRNG. flowstate never stores a key: the
//! keys file (a Kubernetes Secret, or `auth.keys` in the environment) holds one line per key,
//!
//! ```text
//! <id> <SHA-256 of the whole key, hex> <tenant> <permissions>
//! 3kd9a2x7q1mz 9f86d081884c7d65…  acme  sessions:read,sessions:write,cache:*
//! ```
//!
//! and a presented key is accepted when its SHA-256 equals the listed hash, compared in
//! constant time. `#` starts a comment; blank lines are ignored.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::permission::Permissions;
use crate::tenant::Tenant;

const PREFIX: &str = "fs_";
const ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// One listed key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The public id.
    pub id: String,
    hash: [u8; 32],
    /// The tenant the key acts for.
    pub tenant: Tenant,
    /// What it may do.
    pub permissions: Permissions,
}

/// The keys flowstate accepts, by id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_id: HashMap<String, KeyEntry>,
}

/// A freshly made key: the secret to hand out once, and the line for the keys file.
#[derive(Debug)]
pub struct NewKey {
    /// The whole key, for the client.
    pub key: String,
    /// The keys-file line that accepts it.
    pub line: String,
}

/// Makes a key for `tenant` with `permissions`.
pub fn generate(tenant: &Tenant, permissions: Permissions) -> NewKey {
    let mut rng = rand::rng();
    let id: String = (0..ID_LEN)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect();
    let mut secret = [0u8; SECRET_BYTES];
    // ThreadRng is ChaCha12 seeded from the OS and reseeded periodically: a CSPRNG.
    rng.fill_bytes(&mut secret);
    let key = format!("{PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret));
    let line = format!(
        "{id} {} {} {permissions}",
        hex::encode(Sha256::digest(key.as_bytes())),
        tenant.as_str()
    );
    NewKey { key, line }
}

/// The public id of a presented key, if it has a key's shape.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = (rest.get(..ID_LEN)?, rest.get(ID_LEN..)?);
    let secret = secret.strip_prefix('_')?;
    (secret.len() == (SECRET_BYTES * 4).div_ceil(3)).then_some(id)
}

impl KeySet {
    /// Parses keys-file text; `source` names it in errors (`file:line: …`). Every bad line is
    /// reported, and a set with any bad line is refused as a whole.
    pub fn parse(text: &str, source: &str) -> Result<Self, Vec<String>> {
        let mut set = Self::default();
        let mut bad = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match parse_line(line) {
                Ok(entry) if set.by_id.contains_key(&entry.id) => {
                    bad.push(format!(
                        "{source}:{}: key id {} listed twice",
                        n + 1,
                        entry.id
                    ));
                }
                Ok(entry) => {
                    set.by_id.insert(entry.id.clone(), entry);
                }
                Err(why) => bad.push(format!("{source}:{}: {why}", n + 1)),
            }
        }
        if bad.is_empty() { Ok(set) } else { Err(bad) }
    }

    /// Both sets together; an id in both is an error.
    pub fn merge(mut self, other: KeySet) -> Result<Self, Vec<String>> {
        let mut bad = Vec::new();
        for (id, entry) in other.by_id {
            match self.by_id.entry(id) {
                std::collections::hash_map::Entry::Occupied(taken) => bad.push(format!(
                    "key id {} is listed in both auth.keys and auth.keys_file",
                    taken.key()
                )),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(entry);
                }
            }
        }
        if bad.is_empty() { Ok(self) } else { Err(bad) }
    }

    /// The tenants the keys act for.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.by_id.values().map(|e| &e.tenant)
    }

    /// How many keys are listed.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no key is listed.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The entry of a presented key, when it is listed. The hash comparison takes the same
    /// time whatever the key, so timing tells nothing about how close a guess was.
    pub fn verify(&self, presented: &str) -> Option<&KeyEntry> {
        let entry = self.by_id.get(key_id(presented)?)?;
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(hash.ct_eq(&entry.hash)).then_some(entry)
    }
}

fn parse_line(line: &str) -> Result<KeyEntry, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [id, hash, tenant, permissions] = fields[..] else {
        return Err(format!(
            "expected 4 fields (id, sha256, tenant, permissions), found {}",
            fields.len()
        ));
    };
    if id.len() != ID_LEN || !id.bytes().all(|b| ID_ALPHABET.contains(&b)) {
        return Err(format!("key id must be {ID_LEN} characters of a-z 0-9"));
    }
    let hash: [u8; 32] = hex::decode(hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or("the hash must be 64 hex digits (SHA-256 of the key)")?;
    let tenant = Tenant::new(tenant)
        .ok_or("tenant must be 1-64 characters of A-Z a-z 0-9 _ . -, not starting with _")?;
    let permissions = Permissions::parse(permissions)?;
    Ok(KeyEntry {
        id: id.to_owned(),
        hash,
        tenant,
        permissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permission::Permission;

    #[test]
    fn a_generated_key_verifies_against_its_line_only() {
        let tenant = Tenant::new("acme").expect("tenant");
        let made = generate(&tenant, Permissions::parse("cache:read").expect("perms"));
        let set = KeySet::parse(&made.line, "test").expect("its line parses");
        let entry = set.verify(&made.key).expect("the key verifies");
        assert_eq!(entry.tenant, tenant);
        assert!(entry.permissions.allows(Permission::CacheRead));
        assert!(
            !made.line.contains(&made.key[16..]),
            "no secret in the line"
        );
        // The same id with another secret, a truncated key, garbage: all refused.
        let mut forged = made.key.clone();
        forged.replace_range(20..21, if &made.key[20..21] == "A" { "B" } else { "A" });
        for bad in [
            forged.as_str(),
            &made.key[..made.key.len() - 1],
            "fs_",
            "Bearer x",
            "",
        ] {
            assert!(set.verify(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_lines_are_reported_with_their_line_numbers() {
        let made = generate(
            &Tenant::new("a").expect("tenant"),
            Permissions::parse("*").expect("perms"),
        );
        let text = format!(
            "# comment\n{}\n\nshort line\n{} extra\nabcdefghijkl {} bad/tenant cache:read\nabcdefghijkl {} t cache:nope\n{}\n",
            made.line,
            made.line,
            "0".repeat(64),
            "0".repeat(64),
            made.line
        );
        let errors = KeySet::parse(&text, "keys").expect_err("bad lines");
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].starts_with("keys:4:"), "{errors:?}");
        assert!(errors[1].starts_with("keys:5:"), "{errors:?}");
        assert!(errors[2].contains("tenant"), "{errors:?}");
        assert!(errors[3].contains("cache:nope"), "{errors:?}");
        assert!(errors[4].contains("listed twice"), "{errors:?}");
    }
}
