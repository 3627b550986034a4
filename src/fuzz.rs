//! Strategies shared by the fuzz targets (proptest) of the manifest reader and of JSONL and chat extraction.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per fuzz target: enough to find what breaks within seconds in CI; no failure files written.
pub fn config() -> Config {
    Config { failure_persistence: None, ..Config::with_cases(256) }
}

/// Any JSON value, a few levels deep, with the numbers that break arithmetic.
pub fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(u64::MAX - 1), Just(1 << 53), any::<u64>()].prop_map(Value::from),
        prop_oneof![Just(-1i64), Just(i64::MIN), any::<i64>()].prop_map(Value::from),
        prop_oneof![Just(1e308f64), Just(-0.5), Just(f64::MIN_POSITIVE), any::<f64>()].prop_map(Value::from),
        "(?s).{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a position (chosen by `pick`) of a JSON tree, walking objects and arrays.
pub fn replace_somewhere(v: &mut serde_json::Value, mut pick: usize, with: serde_json::Value) {
    let mut at = v;
    loop {
        let n = match at {
            serde_json::Value::Object(o) => o.len(),
            serde_json::Value::Array(a) => a.len(),
            _ => 0,
        };
        if n == 0 || pick.is_multiple_of(3) {
            *at = with;
            return;
        }
        let i = (pick / 3) % n;
        pick /= 3 * n.max(1);
        pick += 1;
        at = match at {
            serde_json::Value::Object(o) => o.values_mut().nth(i).expect("index below len"),
            serde_json::Value::Array(a) => &mut a[i],
            _ => unreachable!("n > 0 only for objects and arrays"),
        };
    }
}
