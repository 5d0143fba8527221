//! PostgreSQL SCRAM-SHA-256 password verifiers, computed here so that setting a role's
//! password sends the verifier, never the plaintext: a statement that reaches the server's
//! log (`log_statement`, an error's `STATEMENT:` line, `pg_stat_statements`) shows nothing
//! a client could log in with.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's own default (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;

/// The verifier PostgreSQL stores for `password` (`SCRAM-SHA-256$<iterations>:<salt>$
/// <StoredKey>:<ServerKey>`), with a fresh random salt.
pub fn verifier(password: &str) -> String {
    verifier_with(password, uuid::Uuid::new_v4().as_bytes(), ITERATIONS)
}

/// The verifier for a given salt and iteration count (RFC 5802 section 3, as PostgreSQL
/// computes it): the password is normalised with SASLprep as the server and the client
/// do; one that SASLprep refuses is used as its raw bytes, as the server does.
pub fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let prepared = stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| password.to_owned());
    let salted = hi(prepared.as_bytes(), salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // An HMAC takes a key of any length.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256, one block of output.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, b) in out.iter_mut().zip(u.iter()) {
            *o ^= b;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL 15 itself stored for `ALTER ROLE … PASSWORD 'pencil-007'`; the same
    /// salt and iteration count must give the same verifier.
    #[test]
    fn the_verifier_is_the_one_postgresql_computes() {
        let stored = "SCRAM-SHA-256$4096:Hqjoy9brkvHSzPgjjxzibw==$P6CE1vOiGqkC7BZQ3If22e9GfaRZb6JfyNLA8wfqq2A=:Cw1+tYuDePyTqWhbvRkeOAeqy+P1mze+TcYciyyWGSY=";
        let salt = STANDARD.decode("Hqjoy9brkvHSzPgjjxzibw==").expect("base64");
        assert_eq!(verifier_with("pencil-007", &salt, 4096), stored);
    }

    #[test]
    fn each_verifier_has_its_own_salt_and_holds_no_plaintext() {
        let (a, b) = (verifier("pencil-007"), verifier("pencil-007"));
        assert_ne!(a, b);
        assert!(
            a.starts_with("SCRAM-SHA-256$4096:") && !a.contains("pencil"),
            "{a}"
        );
    }
}
