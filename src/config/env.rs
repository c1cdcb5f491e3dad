//! `COLONY__` environment overrides: a path into the TOML document, then a value.

use super::{ConfigError, ENV_PREFIX};

/// Sets the value at the path named by `var` (after the prefix) in `doc`.
pub(super) fn apply_override(
    doc: &mut toml::Table,
    var: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::Override {
        var: var.to_string(),
        reason,
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(err("empty path segment".into()));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path.split_last().ok_or_else(|| err("empty path".into()))?;
    let mut node = toml::Value::Table(std::mem::take(doc));
    let result = (|| {
        let mut cursor = &mut node;
        for segment in parents {
            cursor = step(cursor, segment, true).map_err(err)?;
        }
        match cursor {
            toml::Value::Table(t) => {
                t.insert(last.clone(), value);
                Ok(())
            }
            toml::Value::Array(a) => {
                let index: usize = last
                    .parse()
                    .map_err(|_| err(format!("{last:?} is not an array index")))?;
                let slot = a
                    .get_mut(index)
                    .ok_or_else(|| err(format!("index {index} is past the array's end")))?;
                *slot = value;
                Ok(())
            }
            _ => Err(err(format!("cannot set {last:?} inside a plain value"))),
        }
    })();
    if let toml::Value::Table(t) = node {
        *doc = t;
    }
    result
}

/// Walks one path segment down from `node`, creating tables on the way when `create`.
fn step<'a>(
    node: &'a mut toml::Value,
    segment: &str,
    create: bool,
) -> Result<&'a mut toml::Value, String> {
    match node {
        toml::Value::Table(t) => {
            if create && !t.contains_key(segment) {
                t.insert(segment.to_string(), toml::Value::Table(toml::Table::new()));
            }
            t.get_mut(segment)
                .ok_or_else(|| format!("no key {segment:?}"))
        }
        toml::Value::Array(a) => {
            let index: usize = segment
                .parse()
                .map_err(|_| format!("{segment:?} is not an array index"))?;
            a.get_mut(index)
                .ok_or_else(|| format!("index {index} is past the array's end"))
        }
        _ => Err(format!("cannot descend into a plain value at {segment:?}")),
    }
}
