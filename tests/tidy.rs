//! Tidy checks on the source tree itself (after rust-analyzer's `tidy.rs`): imports go one
//! way, as ARCHITECTURE.md's "Layers" block states them; every Rust file opens with a `//!`
//! doc; the library's timers use tokio's clock, never `std::time::Instant`.
//!
//! The rules are read from ARCHITECTURE.md, so the document and the code cannot drift apart:
//! changing a layer means changing the map first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The workspace root (this crate is its root package).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One section of the layers block: which directory it covers, and each module's line.
#[derive(Debug)]
struct Section {
    name: String,
    dir: PathBuf,
    level: BTreeMap<String, usize>,
}

/// Parses the ```` ```layers ```` block of ARCHITECTURE.md: `name (dir/):` starts a section,
/// `N: module module ...` places modules on line N.
fn sections(architecture: &str) -> Vec<Section> {
    let block = architecture
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    let mut sections: Vec<Section> = Vec::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(header) = line.strip_suffix(':') {
            let (name, dir) = header
                .split_once(" (")
                .and_then(|(name, dir)| Some((name, dir.strip_suffix(')')?)))
                .unwrap_or_else(|| panic!("a section header is `name (dir/):`, not {line:?}"));
            sections.push(Section {
                name: name.to_string(),
                dir: root().join(dir),
                level: BTreeMap::new(),
            });
            continue;
        }
        let (number, modules) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("a layer line is `N: modules`, not {line:?}"));
        let number: usize = number.trim().parse().expect("a layer number");
        let section = sections.last_mut().expect("a layer line inside a section");
        for module in modules.split_whitespace() {
            let before = section.level.insert(module.to_string(), number);
            assert!(
                before.is_none(),
                "{module} is placed twice in {}",
                section.name
            );
        }
    }
    assert!(!sections.is_empty(), "the layers block names no section");
    sections
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file that the rules apply to: without comments, and without the test
/// module (by convention the last item, after `#[cfg(test)]`), where tests may reach
/// anything.
fn checked_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| {
            // Declaring a submodule is not importing it.
            let t = line.trim_start();
            !(t.starts_with("mod ")
                || t.starts_with("pub mod ")
                || t.starts_with("pub(crate) mod "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module names that follow `prefix` in `code` (`crate::` → `crate::store::x` gives
/// `store`).
fn named_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        // `prefix` must start a path: not the tail of a longer identifier.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// The module a file belongs to in `section`: its first path component under the section's
/// directory, without `.rs`; `None` for a crate root (`lib.rs`, `main.rs`, `bin/`).
fn module_of(section: &Section, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(&section.dir).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "bin" => None,
        name => Some(name.to_string()),
    }
}

/// Every import in `section` that does not go strictly down, as messages.
fn climbing_imports(section: &Section) -> Vec<String> {
    let mut problems = Vec::new();
    let nested = section.name == "store";
    for file in rust_files(&section.dir) {
        let Some(module) = module_of(section, &file) else {
            continue;
        };
        let Some(&own) = section.level.get(&module) else {
            problems.push(format!(
                "{}: module `{module}` is not placed in ARCHITECTURE.md's layers ({})",
                file.display(),
                section.name
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable");
        let code = checked_code(&text);
        let imported = if nested && module == "mod" {
            // mod.rs names its submodules by relative paths.
            section
                .level
                .keys()
                .filter(|m| *m != "mod")
                .flat_map(|m| {
                    named_after(&code, &format!("{m}::"))
                        .into_iter()
                        .map(move |_| m.clone())
                })
                .collect()
        } else if nested {
            named_after(&code, "super::")
        } else {
            named_after(&code, "crate::")
        };
        for target in imported {
            if target == module {
                continue;
            }
            let Some(&theirs) = section.level.get(&target) else {
                // An item of the parent module (`super::Store`), or a name outside the
                // section's modules.
                continue;
            };
            if theirs >= own {
                problems.push(format!(
                    "{}: `{module}` (line {own}) imports `{target}` (line {theirs}) in {}",
                    file.display(),
                    section.name
                ));
            }
        }
    }
    problems
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md")
}

#[test]
fn imports_go_one_way_as_architecture_md_states() {
    let mut problems = Vec::new();
    for section in sections(&architecture()) {
        assert!(
            section.dir.is_dir(),
            "section {} names {:?}, which is not a directory",
            section.name,
            section.dir
        );
        // Every module the block places exists.
        for module in section.level.keys() {
            let exists = section.dir.join(format!("{module}.rs")).is_file()
                || section.dir.join(module).is_dir();
            if !exists {
                problems.push(format!(
                    "ARCHITECTURE.md places `{module}` in {}, but there is no such module",
                    section.name
                ));
            }
        }
        problems.extend(climbing_imports(&section));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut missing = Vec::new();
    for dir in [
        "src",
        "tests",
        "benches",
        "examples",
        "admin",
        "archiver",
        "loadtest",
        "testkit",
        "fuzz/fuzz_targets",
    ] {
        let dir = root().join(dir);
        if !dir.is_dir() {
            continue;
        }
        for file in rust_files(&dir) {
            if file.components().any(|c| c.as_os_str() == "target") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("readable");
            if !text.trim_start().starts_with("//!") {
                missing.push(file.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a //! doc:\n{}",
        missing.join("\n")
    );
}

#[test]
fn timers_use_tokios_clock() {
    let mut found = Vec::new();
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let std_instant = code.contains("std::time::Instant")
                || (code.contains("std::time::{") && code.contains("Instant"));
            if std_instant {
                found.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "std::time::Instant in the library (use tokio::time::Instant):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_rules_themselves_catch_a_climbing_import() {
    // The checker is only as good as its parsing: a made-up section where a low module
    // imports a high one must be reported.
    let dir = std::env::temp_dir().join(format!("colony-tidy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::write(dir.join("low.rs"), "//! Low.\nuse crate::high::Thing;\n").expect("write");
    std::fs::write(dir.join("high.rs"), "//! High.\nuse crate::low::Other;\n").expect("write");
    let section = Section {
        name: "scratch".into(),
        dir: dir.clone(),
        level: BTreeMap::from([("low".to_string(), 0), ("high".to_string(), 1)]),
    };
    let problems = climbing_imports(&section);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("`low` (line 0) imports `high` (line 1)"));
}
