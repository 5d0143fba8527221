//! The CPU a bearer token adds to a request: `Authenticator::verify`, the check every
//! non-public route runs, timed over many verifications, for the HS256 secret of local
//! development and for the asymmetric keys production verifies with (RS256 and EdDSA from a
//! JWK set), each with a token it accepts and one whose signature it refuses.
//!
//! `cargo bench -p runtime --bench token_verification` (a release build). Arguments:
//! `--iterations N` per scenario (default 100,000), and a word to run only the scenarios
//! whose name holds it. CPU time is the thread's own (`CLOCK_THREAD_CPUTIME_ID`), so other
//! processes on a loaded machine do not count; wall time is printed beside it. For
//! instruction counts, run the binary under `valgrind --tool=callgrind
//! --toggle-collect='*Authenticator::verify*'` (BENCHMARKS.md has the recipe).

// The bench's report is its standard output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use module_api::Role;
use runtime::auth::Authenticator;
use runtime::config::Settings;
use runtime::config::Sources;

/// A throwaway 2048-bit RSA key made for this bench (PKCS#1 DER, base64), and its public
/// modulus as a JWK `n`. It signs nothing outside this file.
const RSA_PKCS1_DER: &[&str] = &[
    "MIIEpQIBAAKCAQEA5If1zMjYRaqjpYMR5Hr0uvh61/1OngyY721/laaCZCMTUAggVrVcyHGqMjmMG/2Hcq/9y3DY",
    "bLvEzjxbHhUwl8H1Yzv+KQQ3KaNpRy7EIav4JYcxbl0lfamYAfJ0bzbCB3yCigvnEyKbYWn5o4UgS/R1C11+1sLU",
    "XPBAefXhnAIY3s5NeZuU1VOqiyddfHHRZAQ0Kfr7ZA/TayNttdigbW5DfkFjp9pj5YwcwsET8eD6o6yRO+5btf7p",
    "wsmYaon52Rh7cODr82ciFxJ16v2vRJRRmmJF0l2zBrdl2/0/dagTcp4cTDUpVo3cEVJqcPgAzQIlk2pVkhZ+b79g",
    "CZ5LWwIDAQABAoIBAFuUnIz3Q6wPaMsQDmCIYYB3yQq7SQEPPU5djA5VjtVANSIST5tPzKHK4xCDfUFORTRRkJwx",
    "WZmhWYnoJ/+TMEjwgjzFMuIO/WgjQzIybIit2KB5X/bBPx/vkaneFojm4bSMUeeuQ2ioqqnMBS1hUQL/MNRgIE9B",
    "/kZMRRpazZFth9tUmsHNCa7jjAFudwPqyCfINbxTwRqCT7YJ0LRHLy1DAiOe3wUG4uZ7drOcxGp/w6811ZAKZgnz",
    "itOterFGfDKkgaNxEEsxCCtDvr61fRwqvp4RVEA0+dduIbQiRThqk9UuHV0rV3HDCd7WBUZbAarqM5JulCXinzkO",
    "DrhyhyECgYEA8wZZOrQSQrKVzMkrvhSMYh9A2UFtQ633+Ld3heJ4iJzuRd9S942BDTJ/TfH+ZmgriItzY7FPBpNh",
    "7+/nAcXN+hC9/VIa4Ihjxiqim/4vUSr1uQJTIAU46mjErS62QAth8vi3Lmxhtp3PPrx2HKQewUARGsDjsp4T0m0v",
    "bauUTDECgYEA8LuDKF5F1/NqQLSTT0v2MyFlOkmxY7ROKl/7zwvnCyDn3dFz6yTPG/x+imCNQtGxVJbKT7o12ACg",
    "pyIUvGrrfo7dhDuAp4NKhb9Yd3/ieoH/a63YcPgg0OEC9aKul1zw9cZGUD5tyPARJpQJF8QNuBbt4Rs9v5jBjqTO",
    "viASSUsCgYEAuobL47ekMFcbjNN25GynFwS/5EBIWeLj6Zz/et5I/ynb4/s1ldWhEH0KosuzI+yeRS4rQYAslHJ4",
    "gA1U89Jbdqx09kKXaHCmi8nbhvlAXf8oHHkBThlUBu6kzfuFXICgDDoDdvkuwlg7Yf6KdQ8un8rJlgwod8bGlgLB",
    "nV5M83ECgYEAyXGP8mLY/TmSyyyQLIX7MpQaeikaiL1jv2/sbjiekSBrBqJz5uw5Z0jltvPOoYCJbKh2CTtgPS1h",
    "Qhpx0a2C/LeeRD3qjcJ+xOb2p6DbKvrHexrRiM8J3uC7skL86Gp8tJ3DTvi+s6u4Hlk4Nqv3cvm0+27pQAAa0Du3",
    "ST/bLXsCgYEA2FftyC3WpDQhoTKlrZv+vIllLgssbR+9Br7kPseZGquDh1ttoYRGBxozcMcx+enhL9bYZwTPOcNl",
    "/vE9UKB6AsGG3HvjARtZw52a/x3jzKL3Mey6VWKuyAyd92NtnwkOnq+TiUap63RRDXuVFXjsKUxapAcn6gYjNuS6",
    "+k9Z98M=",
];
const RSA_N: &str = "5If1zMjYRaqjpYMR5Hr0uvh61_1OngyY721_laaCZCMTUAggVrVcyHGqMjmMG_2Hcq_9y3DYbLvEzjxbHhUwl8H1Yzv-KQQ3KaNpRy7EIav4JYcxbl0lfamYAfJ0bzbCB3yCigvnEyKbYWn5o4UgS_R1C11-1sLUXPBAefXhnAIY3s5NeZuU1VOqiyddfHHRZAQ0Kfr7ZA_TayNttdigbW5DfkFjp9pj5YwcwsET8eD6o6yRO-5btf7pwsmYaon52Rh7cODr82ciFxJ16v2vRJRRmmJF0l2zBrdl2_0_dagTcp4cTDUpVo3cEVJqcPgAzQIlk2pVkhZ-b79gCZ5LWw";

/// A throwaway Ed25519 key made for this bench (PKCS#8 DER, hex), and its public half as a
/// JWK `x`. It signs nothing outside this file.
const ED25519_PKCS8: &str = "302e020100300506032b657004220420c224d306482e57c366d829475dd25e7049e59f9e7a8e0882ffb8f11fe213e9b8";
const ED25519_X: &str = "bHiihAkxA7kII3Oq8N2p6X6mgKJnaiJiPsNL4k-i2B8";

/// Rounds each scenario's verifications are split into; the median round is reported.
const ROUNDS: usize = 5;

struct Scenario<'a> {
    name: &'static str,
    auth: &'a Authenticator,
    token: String,
    accepted: bool,
}

fn main() {
    let (iterations, filter) = arguments();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let load = |environment: &str, vars: &[(&str, &str)]| {
        Settings::load(Sources {
            dir: &config,
            environment,
            env_vars: Some(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
        })
        .unwrap_or_else(|e| panic!("the {environment} settings load: {e}"))
    };

    // Local development: the fixed development secret, tokens minted as `app token` does.
    let local = load("local", &[]);
    let hs256 = Authenticator::from_settings(&local).expect("an HS256 verifier");
    let minted = |settings: &Settings| {
        runtime::auth::mint(
            settings,
            &[Role::Customer],
            "bench-customer",
            Duration::from_secs(3600),
        )
        .expect("a token")
    };
    let other_secret = load(
        "local",
        &[(
            "APP__AUTH__HS256_SECRET",
            "another-secret-that-is-at-least-32-bytes",
        )],
    );

    // Production: a JWK set file holding an RSA and an Ed25519 key.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let jwks = dir.path().join("jwks.json");
    let set = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "use": "sig", "x": ED25519_X},
    ]});
    std::fs::write(&jwks, set.to_string()).expect("the JWK set is written");
    let production = load(
        "production",
        &[("APP__AUTH__JWKS_FILE", jwks.to_str().expect("a UTF-8 path"))],
    );
    let asymmetric = Authenticator::from_settings(&production).expect("an RS256/EdDSA verifier");
    let rsa = EncodingKey::from_rsa_der(
        &base64::engine::general_purpose::STANDARD
            .decode(RSA_PKCS1_DER.concat())
            .expect("base64"),
    );
    let ed25519 = EncodingKey::from_ed_der(&hex(ED25519_PKCS8));
    let signed = |algorithm: Algorithm, kid: &str, key: &EncodingKey, subject: &str| {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims(&production, subject), key).expect("signed")
    };

    let scenarios = [
        Scenario {
            name: "hs256 accepted",
            auth: &hs256,
            token: minted(&local),
            accepted: true,
        },
        Scenario {
            name: "hs256 refused (another secret)",
            auth: &hs256,
            token: minted(&other_secret),
            accepted: false,
        },
        Scenario {
            name: "rs256 accepted",
            auth: &asymmetric,
            token: signed(Algorithm::RS256, "rsa-1", &rsa, "bench-customer"),
            accepted: true,
        },
        Scenario {
            name: "rs256 refused (forged signature)",
            auth: &asymmetric,
            token: forged(
                &signed(Algorithm::RS256, "rsa-1", &rsa, "bench-customer"),
                &signed(Algorithm::RS256, "rsa-1", &rsa, "someone-else"),
            ),
            accepted: false,
        },
        Scenario {
            name: "eddsa accepted",
            auth: &asymmetric,
            token: signed(Algorithm::EdDSA, "ed-1", &ed25519, "bench-customer"),
            accepted: true,
        },
        Scenario {
            name: "eddsa refused (forged signature)",
            auth: &asymmetric,
            token: forged(
                &signed(Algorithm::EdDSA, "ed-1", &ed25519, "bench-customer"),
                &signed(Algorithm::EdDSA, "ed-1", &ed25519, "someone-else"),
            ),
            accepted: false,
        },
    ];

    println!("token verification, {iterations} verifications per scenario in {ROUNDS} rounds");
    println!(
        "{:<34} {:>14} {:>22} {:>14}",
        "scenario", "CPU ns/verify", "(min-max of rounds)", "wall ns/verify"
    );
    for scenario in scenarios.iter().filter(|s| s.name.contains(&filter)) {
        let outcome = scenario.auth.verify(&scenario.token);
        assert_eq!(
            outcome.is_ok(),
            scenario.accepted,
            "{}: the verifier answered {outcome:?}",
            scenario.name
        );
        let per_round = (iterations / ROUNDS).max(1);
        // Warm-up: caches, branch predictors, the allocator's free lists.
        run(scenario, per_round / 10 + 1);
        let mut cpu = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..ROUNDS {
            let (c, w) = run(scenario, per_round);
            cpu.push(c.as_nanos() as f64 / per_round as f64);
            wall.push(w.as_nanos() as f64 / per_round as f64);
        }
        cpu.sort_by(f64::total_cmp);
        wall.sort_by(f64::total_cmp);
        println!(
            "{:<34} {:>14.0} {:>22} {:>14.0}",
            scenario.name,
            cpu[ROUNDS / 2],
            format!("({:.0}-{:.0})", cpu[0], cpu[ROUNDS - 1]),
            wall[ROUNDS / 2]
        );
    }
}

/// `count` verifications of the scenario's token: the thread's CPU time and the wall time.
fn run(scenario: &Scenario<'_>, count: usize) -> (Duration, Duration) {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    for _ in 0..count {
        let outcome = scenario.auth.verify(black_box(&scenario.token));
        black_box(outcome.is_ok());
    }
    (thread_cpu() - cpu, wall.elapsed())
}

/// The time this thread has run on a CPU.
fn thread_cpu() -> Duration {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is readable");
    Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32)
}

/// The claims production expects, valid for an hour.
fn claims(settings: &Settings, subject: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    serde_json::json!({
        "sub": subject, "roles": ["customer"], "iat": now, "nbf": now, "exp": now + 3600,
        "iss": settings.auth.issuer, "aud": settings.auth.audience,
    })
}

/// `token`'s header and claims with `other`'s signature: well formed, signed by the right
/// key, but not over these bytes.
fn forged(token: &str, other: &str) -> String {
    let (signed, _) = token.rsplit_once('.').expect("a JWT");
    let (_, signature) = other.rsplit_once('.').expect("a JWT");
    format!("{signed}.{signature}")
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `--iterations N` and an optional scenario filter; cargo's own `--bench` is ignored.
fn arguments() -> (usize, String) {
    let mut iterations = 100_000;
    let mut filter = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| {
                        eprintln!("--iterations needs a positive number");
                        std::process::exit(2)
                    });
            }
            word if !word.starts_with('-') => filter = word.to_owned(),
            other => {
                eprintln!("unknown argument {other}; usage: [--iterations N] [SCENARIO WORD]");
                std::process::exit(2)
            }
        }
    }
    (iterations, filter)
}
