//! Virtual API keys: generated with 256 random bits, stored only as a
//! SHA-256 hash, compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new key: `sk-` and 64 hex digits (256 random bits from a CSPRNG seeded by the OS).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    // ThreadRng: a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    format!("sk-{}", hex::encode(bytes))
}

/// The key's identity in the store: lowercase hex SHA-256 of the key text.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Does `candidate` look like a key hash (64 lowercase hex digits)?
pub fn is_key_hash(candidate: &str) -> bool {
    candidate.len() == 64
        && candidate
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Constant-time equality for secrets (the master key): the time taken
/// does not depend on where the first difference is. Both sides are
/// hashed first so the length of the secret does not leak either.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.ct_eq(&hb).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_random_and_hash_stably() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-") && a.len() == 67);
        assert_eq!(hash_key(&a), hash_key(&a.clone()));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(is_key_hash(&hash_key(&a)));
        assert!(!is_key_hash(&a));
    }

    #[test]
    fn sha256_of_a_known_key() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("master", "master"));
        assert!(!secrets_equal("master", "masteR"));
        assert!(!secrets_equal("master", "master2"));
        assert!(!secrets_equal("", "master"));
    }
}
