//! The contracts hold: every event type has a checked-in JSON Schema equal to the one its
//! Rust type produces (so a change to a payload shows up as a schema diff in review), and a
//! golden sample that still decodes (so this release reads what earlier releases wrote).
//! `UPDATE_CONTRACTS=1 cargo test -p contracts` writes a missing schema or sample; an
//! existing sample is never rewritten.

use std::path::{Path, PathBuf};

use contracts::{EVENT_TYPES, Envelope, SUBSCRIPTIONS, event_type_named, source_of};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn updating() -> bool {
    std::env::var("UPDATE_CONTRACTS").is_ok_and(|v| v == "1")
}

#[test]
fn wire_names_are_module_fact_version() {
    for t in EVENT_TYPES {
        let parts: Vec<&str> = t.name.split('.').collect();
        assert_eq!(parts.len(), 3, "{}", t.name);
        assert!(kernel::is_valid_module_name(parts[0]), "{}", t.name);
        assert!(
            parts[1].chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{}",
            t.name
        );
        assert!(
            parts[2]
                .strip_prefix('v')
                .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 1)),
            "{}",
            t.name
        );
    }
    let mut names: Vec<&str> = EVENT_TYPES.iter().map(|t| t.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), EVENT_TYPES.len(), "no wire name twice");
}

#[test]
fn every_schema_is_checked_in_and_current() {
    let mut stale = Vec::new();
    for t in EVENT_TYPES {
        let path = dir("schemas").join(format!("{}.json", t.name));
        let generated =
            serde_json::to_string_pretty(&(t.schema)()).expect("schema serializes") + "\n";
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == generated => {}
            Ok(_) if updating() => std::fs::write(&path, &generated).expect("write schema"),
            Err(_) if updating() => std::fs::write(&path, &generated).expect("write schema"),
            Ok(_) => stale.push(format!("{} differs from its type", path.display())),
            Err(_) => stale.push(format!("{} is missing", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nA changed payload is a breaking change unless only optional fields were added: \
         publish a new version instead. Then run UPDATE_CONTRACTS=1 cargo test -p contracts.",
        stale.join("\n")
    );
}

#[test]
fn every_golden_sample_still_decodes() {
    for t in EVENT_TYPES {
        let path = dir("samples").join(format!("{}.json", t.name));
        let raw = std::fs::read(&path).unwrap_or_else(|_| panic!("{} is missing", path.display()));
        let envelope =
            Envelope::from_bytes(&raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(envelope.event_type, t.name, "{}", path.display());
        assert_eq!(envelope.source, source_of(t.name), "{}", path.display());
        (t.check)(&envelope).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let again = Envelope::from_bytes(&envelope.to_bytes()).expect("round trip");
        assert_eq!(again, envelope, "{}", path.display());
    }
}

#[test]
fn every_subscription_names_a_known_event_of_another_module() {
    for s in SUBSCRIPTIONS {
        assert!(event_type_named(s.event_type).is_some(), "{s:?}");
        assert_ne!(
            source_of(s.event_type),
            s.consumer,
            "{s:?}: a module does not consume itself"
        );
    }
}

#[test]
fn a_payload_that_breaks_its_rules_is_refused_both_ways() {
    use contracts::checkout::{OrderLineV1, OrderPlacedV1};
    use contracts::{Cause, ContractError, Event};
    let bad = OrderPlacedV1 {
        order_id: uuid::Uuid::now_v7(),
        lines: vec![OrderLineV1 {
            sku: "not a sku".into(),
            quantity: 0,
            unit_price_minor: 1,
        }],
        currency: "EUR".into(),
        total_minor: 0,
    };
    assert!(matches!(
        Envelope::new(&bad, &Cause::fresh()),
        Err(ContractError::Invalid { .. })
    ));
    let mut forged = Envelope::new(
        &OrderPlacedV1 {
            lines: vec![OrderLineV1 {
                sku: "A".into(),
                quantity: 1,
                unit_price_minor: 1,
            }],
            ..bad.clone()
        },
        &Cause::fresh(),
    )
    .expect("valid");
    forged.payload["lines"][0]["quantity"] = serde_json::json!(0);
    assert!(matches!(
        forged.decode::<OrderPlacedV1>(),
        Err(ContractError::Invalid { .. })
    ));
    forged.payload = serde_json::json!({"order_id": "nope"});
    assert!(matches!(
        forged.decode::<OrderPlacedV1>(),
        Err(ContractError::Undecodable { .. })
    ));
    assert_eq!(OrderPlacedV1::TYPE, "checkout.order_placed.v1");
}
