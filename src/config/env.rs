//! `COLONY__` environment overrides: a path into the TOML document, then a value.
//!
//! A path creates what is missing on its way: tables, and arrays where the next segment is an
//! index. An index may name an existing item or the one just past the end (which adds it), so
//! a whole list — tokens from a secret, MongoDB addresses — can come from the environment
//! alone, item by item in index order.

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
        for (i, segment) in parents.iter().enumerate() {
            let next = parents.get(i + 1).unwrap_or(last);
            cursor = step(cursor, segment, next).map_err(err)?;
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
                if index == a.len() {
                    a.push(value);
                    return Ok(());
                }
                let len = a.len();
                let slot = a
                    .get_mut(index)
                    .ok_or_else(|| err(past_the_end(index, len)))?;
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

/// Walks one path segment down from `node`, creating what is missing: an array when `next`
/// (the segment after) is an index, else a table; in an array, the item just past the end.
fn step<'a>(
    node: &'a mut toml::Value,
    segment: &str,
    next: &str,
) -> Result<&'a mut toml::Value, String> {
    let empty = || {
        if next.parse::<usize>().is_ok() {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    };
    match node {
        toml::Value::Table(t) => Ok(t.entry(segment.to_string()).or_insert_with(empty)),
        toml::Value::Array(a) => {
            let index: usize = segment
                .parse()
                .map_err(|_| format!("{segment:?} is not an array index"))?;
            if index == a.len() {
                a.push(empty());
            }
            let len = a.len();
            a.get_mut(index).ok_or_else(|| past_the_end(index, len))
        }
        _ => Err(format!("cannot descend into a plain value at {segment:?}")),
    }
}

fn past_the_end(index: usize, len: usize) -> String {
    format!(
        "index {index} is past the array's end ({len} items; add items in index order from {len})"
    )
}

/// Orders override variables by path, comparing array indexes as numbers.
pub(super) fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |var: &str| -> Vec<(u8, u64, String)> {
        var.split("__")
            .map(|s| match s.parse::<u64>() {
                Ok(n) => (0, n, String::new()),
                Err(_) => (1, 0, s.to_ascii_lowercase()),
            })
            .collect()
    };
    key(a).cmp(&key(b))
}
