//! The docs stay true to the code: every variable a service reads is documented.

use std::collections::BTreeSet;
use std::path::Path;

/// Files under `dir` ending in `.{ext}`, recursively.
fn files(dir: &Path, ext: &str, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// The variable names read in `text`: the first string argument of every typed env read, and
/// every name in a `missing_from_env(&[…])` list.
fn variables_read(text: &str) -> BTreeSet<String> {
    let is_name = |s: &str| {
        s.len() > 2
            && s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    let mut out = BTreeSet::new();
    for call in [
        "env::optional(\"",
        "env::string_or(\"",
        "env::parse_or(\"",
        "env::flag(\"",
        "env::base_url(\"",
        "std::env::var(\"",
        "std::env::var_os(\"",
    ] {
        for (i, _) in text.match_indices(call) {
            let rest = &text[i + call.len()..];
            let name = &rest[..rest.find('"').unwrap_or(0)];
            if is_name(name) {
                out.insert(name.to_owned());
            }
        }
    }
    for (i, _) in text.match_indices("missing_from_env(&[") {
        let rest = &text[i..];
        let list = &rest[..rest.find(']').unwrap_or(0)];
        for name in list.split('"').skip(1).step_by(2) {
            if is_name(name) {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_variable_a_service_reads_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["services", "shared"] {
        self::files(&root.join(dir), "rs", &mut files);
    }
    let mut read = BTreeSet::new();
    // The tests crate's own knobs (benchmark rates, E2E_EVENTS) are not scanned: no service
    // reads them.
    for f in &files {
        read.extend(variables_read(&std::fs::read_to_string(f).unwrap()));
    }
    read.insert(leadpipe_registry::DESTINATIONS_VARIABLE.to_owned());
    assert!(
        read.len() > 40,
        "the scan found only {} variables: {read:?}",
        read.len()
    );
    let mut docs = String::new();
    let mut pages = Vec::new();
    self::files(&root.join("docs"), "md", &mut pages);
    for page in pages {
        docs.push_str(&std::fs::read_to_string(page).unwrap());
    }
    let undocumented: Vec<&String> = read
        .iter()
        .filter(|v| !docs.contains(&format!("`{v}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "read by a service but in no page of docs/: {undocumented:?}"
    );
}
