//! The JSON a run prints, and medians over repeated runs.

use serde_json::{Map, Value};

/// The median of each number in `runs` (objects are walked, arrays and
/// strings left out); integers stay integers when every run's is one.
pub fn median(runs: &[Value]) -> Value {
    let Some(Value::Object(first)) = runs.first() else { return Value::Null };
    let mut out = Map::new();
    for (key, value) in first {
        let column: Vec<Value> = runs.iter().filter_map(|run| run.get(key).cloned()).collect();
        if column.len() != runs.len() {
            continue;
        }
        match value {
            Value::Number(_) => {
                if let Some(m) = median_number(&column) {
                    out.insert(key.clone(), m);
                }
            }
            Value::Object(_) => {
                let inner = median(&column);
                if inner.as_object().is_some_and(|o| !o.is_empty()) {
                    out.insert(key.clone(), inner);
                }
            }
            _ => {}
        }
    }
    Value::Object(out)
}

fn median_number(column: &[Value]) -> Option<Value> {
    if column.iter().all(Value::is_u64) {
        let mut values: Vec<u64> = column.iter().filter_map(Value::as_u64).collect();
        values.sort_unstable();
        let n = values.len();
        let m = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]).div_ceil(2) };
        return Some(m.into());
    }
    let mut values: Vec<f64> = column.iter().map(Value::as_f64).collect::<Option<_>>()?;
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let m = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    serde_json::Number::from_f64((m * 1000.0).round() / 1000.0).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn medians_of_numbers_and_nested_objects() {
        let runs = [
            json!({"n": 3, "x": 1.5, "s": "a", "o": {"p99_ms": 10.0}, "l": [1]}),
            json!({"n": 1, "x": 2.5, "s": "b", "o": {"p99_ms": 30.0}, "l": [2]}),
            json!({"n": 2, "x": 0.5, "s": "c", "o": {"p99_ms": 20.0}, "l": [3]}),
        ];
        assert_eq!(median(&runs), json!({"n": 2, "x": 1.5, "o": {"p99_ms": 20.0}}));
        assert_eq!(median(&[]), Value::Null);
    }
}
