//! A small reader for manual-invoke JSON objects: each accessor reads one field and records
//! what is wrong with it, so one refusal lists every problem (the runner bounds the message).

use serde_json::{Map, Value};

/// Reads fields of a JSON object, collecting problems instead of stopping at the first.
#[derive(Debug)]
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    problems: Vec<String>,
}

impl<'a> Fields<'a> {
    /// A reader over `map`.
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Fields {
            map,
            problems: Vec::new(),
        }
    }

    /// Records a problem found by the caller.
    pub fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    /// Records every key not in `allowed`, naming the allowed ones.
    pub fn only(&mut self, allowed: &[&str]) {
        for key in self.map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.problems.push(format!(
                    "unknown field {key:?} (allowed: {})",
                    allowed.join(", ")
                ));
            }
        }
    }

    /// The raw value; absent and `null` are `None`.
    pub fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A boolean; anything else is a problem.
    pub fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.value(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.problems
                    .push(format!("{key} must be true or false, not {other}"));
                None
            }
        }
    }

    /// A whole number in `0..=max`; anything else is a problem.
    pub fn number(&mut self, key: &str, max: i64) -> Option<i64> {
        let v = self.value(key)?;
        match v.as_i64() {
            Some(n) if (0..=max).contains(&n) => Some(n),
            _ => {
                self.problems.push(format!(
                    "{key} must be a whole number from 0 to {max}, not {v}"
                ));
                None
            }
        }
    }

    /// A list of non-empty strings; each bad item, or a non-list, is a problem.
    pub fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        match self.value(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    match i.as_str().filter(|s| !s.is_empty()) {
                        Some(s) => out.push(s.to_owned()),
                        None => self.problems.push(format!("{key}: {i} is not a name")),
                    }
                }
                Some(out)
            }
            other => {
                self.problems
                    .push(format!("{key} must be a list of strings, not {other}"));
                None
            }
        }
    }

    /// A list of strings, each trimmed and non-empty; each bad item, or a non-list, is a problem.
    pub fn trimmed_strings(&mut self, key: &str) -> Option<Vec<String>> {
        match self.value(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    match i.as_str().map(str::trim).filter(|s| !s.is_empty()) {
                        Some(s) => out.push(s.to_owned()),
                        None => self
                            .problems
                            .push(format!("{key}: {i} is not a non-empty string")),
                    }
                }
                Some(out)
            }
            other => {
                self.problems
                    .push(format!("{key} must be a list of strings, not {other}"));
                None
            }
        }
    }

    /// Records every item of `list` that `ok` refuses, as "{item:?} is not {what}".
    pub fn check_each(&mut self, list: Option<&Vec<String>>, ok: fn(&str) -> bool, what: &str) {
        for i in list.into_iter().flatten() {
            if !ok(i) {
                self.problems.push(format!("{i:?} is not {what}"));
            }
        }
    }

    /// `Ok` when nothing was wrong, else every problem in the order found.
    pub fn finish(self) -> Result<(), Vec<String>> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_problem_is_listed_in_order() {
        let v = json!({"a": 1, "b": "x", "n": 11, "l": ["ok", 3], "flag": true, "z": null});
        let map = v.as_object().expect("object");
        let mut f = Fields::new(map);
        f.only(&["b", "n", "l", "flag", "z"]);
        assert_eq!(f.boolean("flag"), Some(true));
        assert_eq!(f.boolean("b"), None);
        assert_eq!(f.number("n", 10), None);
        assert_eq!(f.number("z", 10), None);
        assert_eq!(f.strings("l"), Some(vec!["ok".to_owned()]));
        assert_eq!(
            f.finish(),
            Err(vec![
                "unknown field \"a\" (allowed: b, n, l, flag, z)".to_owned(),
                "b must be true or false, not \"x\"".to_owned(),
                "n must be a whole number from 0 to 10, not 11".to_owned(),
                "l: 3 is not a name".to_owned(),
            ])
        );
    }
}
