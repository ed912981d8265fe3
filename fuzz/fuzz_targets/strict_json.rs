//! `validate::parse_strict` against serde_json and an independent walk, with
//! the default limits and with small ones (so that inputs of fuzzing size
//! reach the value count).
//!
//! Invariants:
//! - nothing panics;
//! - what parse_strict accepts, `serde_json::from_slice::<Value>` accepts,
//!   with an equal value, and parse_strict accepts its re-serialization too;
//! - a document with a duplicate key in any object (compared after
//!   unescaping), nested deeper than the depth limit or holding more values
//!   than the value limit, is refused;
//! - a refusal for a limit is true of the document: it is nested deeper, or
//!   holds more values, than the limit (when serde_json parses it at all:
//!   the parse stops at the limit, so what follows is never read);
//! - conversely, a document serde_json accepts, without duplicates and
//!   within both limits, is accepted;
//! - a refusal's reason never quotes the body (it has no `"`).
#![no_main]

use std::collections::HashSet;
use std::fmt;

use libfuzzer_sys::fuzz_target;
use polytomic_gateway::validate::{parse_strict, JsonLimits, ParseError};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What the independent walk found.
#[derive(Debug, Default)]
struct Found {
    duplicate: bool,
    max_depth: usize,
    /// Every value, as the limit counts them (object keys not).
    values: usize,
}

/// Walks a document recording duplicate keys and the deepest nesting.
struct Walk<'f> {
    depth: usize,
    found: &'f mut Found,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.found.values += 1;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        self.found.max_depth = self.found.max_depth.max(depth);
        while seq
            .next_element_seed(Walk {
                depth,
                found: &mut *self.found,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        self.found.max_depth = self.found.max_depth.max(depth);
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                self.found.duplicate = true;
            }
            map.next_value_seed(Walk {
                depth,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

/// The walk, or `None` when serde_json refuses the document.
fn walk(bytes: &[u8]) -> Option<Found> {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Walk {
        depth: 0,
        found: &mut found,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(found)
}

/// Small enough for fuzzing inputs to pass them.
const SMALL: JsonLimits = JsonLimits {
    max_depth: 8,
    max_values: 32,
};

fn check(
    data: &[u8],
    limits: JsonLimits,
    loose: &Result<Value, serde_json::Error>,
    found: Option<&Found>,
) {
    match parse_strict(data, limits) {
        Ok(value) => {
            let loose = loose
                .as_ref()
                .expect("parse_strict accepted what serde_json refuses");
            assert_eq!(&value, loose, "parse_strict and serde_json disagree");
            let found = found.expect("the walk refused an accepted document");
            assert!(!found.duplicate, "parse_strict accepted a duplicate key");
            assert!(
                found.max_depth <= limits.max_depth,
                "parse_strict accepted deep nesting"
            );
            assert!(
                found.values <= limits.max_values,
                "parse_strict accepted too many values"
            );
            let again = serde_json::to_vec(&value).expect("a Value serializes");
            assert_eq!(
                parse_strict(&again, limits).as_ref().ok(),
                Some(&value),
                "the re-serialization is not accepted as the same value"
            );
        }
        Err(ParseError::Invalid(e)) => {
            assert!(
                !e.reason.contains('"'),
                "the refusal quotes something: {:?}",
                e.reason
            );
            assert!(e.line >= 1, "{e:?}");
            if let (Ok(_), Some(found)) = (loose, found) {
                assert!(
                    found.duplicate,
                    "parse_strict refused a document serde_json accepts, \
                     without duplicates, as invalid: {e}"
                );
            }
        }
        Err(ParseError::TooDeep { limit }) => {
            assert_eq!(limit, limits.max_depth);
            if let Some(found) = found {
                assert!(found.max_depth > limit, "refused as too deep: {found:?}");
            }
        }
        Err(ParseError::TooManyValues { limit }) => {
            assert_eq!(limit, limits.max_values);
            if let Some(found) = found {
                assert!(
                    found.values > limit,
                    "refused as too many values: {found:?}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let loose = serde_json::from_slice::<Value>(data);
    // Cheap sanity of the syntax alone: serde_json's own skip-parser.
    let syntax_ok = serde_json::from_slice::<IgnoredAny>(data).is_ok();
    let found = walk(data);
    check(data, JsonLimits::DEFAULT, &loose, found.as_ref());
    check(data, SMALL, &loose, found.as_ref());
    if loose.is_ok() {
        assert!(syntax_ok);
    }
});
