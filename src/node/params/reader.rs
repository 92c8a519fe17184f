//! Typed reads out of the flat parameter map.

use std::collections::BTreeMap;

use vlm_perception::pipeline::validate_texts;

use super::{invalid, split_texts, ParamError, Value};

/// Reads typed values out of the flat parameter map, naming the parameter in every error.
pub(super) struct Reader<'a> {
    pub(super) map: &'a BTreeMap<String, Value>,
}

impl Reader<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        match self.map.get(name) {
            None | Some(Value::NotSet) => None,
            Some(v) => Some(v),
        }
    }

    fn wrong_type(name: &str, expected: &str, v: &Value) -> ParamError {
        invalid(name, format!("expected {expected}, got {}", v.type_name()))
    }

    pub(super) fn bool(&self, name: &str, default: bool) -> Result<bool, ParamError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Self::wrong_type(name, "a bool", v)),
        }
    }

    pub(super) fn int(&self, name: &str, default: i64) -> Result<i64, ParamError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Integer(i)) => Ok(*i),
            Some(v) => Err(Self::wrong_type(name, "an integer", v)),
        }
    }

    /// A float; integers are accepted (`rate: 5`).
    pub(super) fn float(&self, name: &str, default: f64) -> Result<f64, ParamError> {
        let v = match self.get(name) {
            None => default,
            Some(Value::Double(d)) => *d,
            Some(Value::Integer(i)) => *i as f64,
            Some(v) => return Err(Self::wrong_type(name, "a number", v)),
        };
        if !v.is_finite() {
            return Err(invalid(name, format!("must be finite, got {v}")));
        }
        Ok(v)
    }

    pub(super) fn string(&self, name: &str, default: &str) -> Result<String, ParamError> {
        match self.get(name) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.trim().to_string()),
            Some(v) => Err(Self::wrong_type(name, "a string", v)),
        }
    }

    pub(super) fn nonempty_string(&self, name: &str, default: &str) -> Result<String, ParamError> {
        let s = self.string(name, default)?;
        if s.is_empty() {
            return Err(invalid(name, "must not be empty"));
        }
        Ok(s)
    }

    /// A list of texts: a string array, or one comma-separated string (`""` or `[]`: none).
    pub(super) fn texts(
        &self,
        name: &str,
        default: &[&str],
        what: &str,
    ) -> Result<Vec<String>, ParamError> {
        let list = match self.map.get(name) {
            None => default.iter().map(|s| s.to_string()).collect(),
            // rcl parses `[]` as "not set": an explicitly empty list.
            Some(Value::NotSet) => Vec::new(),
            Some(Value::StringArray(a)) => a.iter().map(|s| s.trim().to_string()).collect(),
            Some(Value::String(s)) => split_texts(s),
            Some(v) => return Err(Self::wrong_type(name, "a string array", v)),
        };
        if !list.is_empty() {
            validate_texts(&list, what).map_err(|e| invalid(name, e.to_string()))?;
        }
        Ok(list)
    }

    pub(super) fn fraction(&self, name: &str, default: f64) -> Result<f32, ParamError> {
        self.fraction64(name, default).map(|v| v as f32)
    }

    pub(super) fn fraction64(&self, name: &str, default: f64) -> Result<f64, ParamError> {
        let v = self.float(name, default)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(name, format!("must be in [0, 1], got {v}")));
        }
        Ok(v)
    }
}
