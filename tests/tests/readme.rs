//! The README's Rust snippets compile: each one appears verbatim in
//! `examples/examples/readme.rs`, which the workspace builds.

use std::path::Path;

fn trimmed_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn every_rust_snippet_of_the_readme_is_in_a_compiled_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let example =
        std::fs::read_to_string(root.join("examples/examples/readme.rs")).expect("readme example");
    let example = trimmed_lines(&example);

    let snippets: Vec<&str> = readme
        .split("```rust\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .collect();
    assert!(snippets.len() >= 3, "the README shows its examples");
    for snippet in snippets {
        let lines = trimmed_lines(snippet);
        let found = example
            .windows(lines.len())
            .any(|window| window == lines.as_slice());
        assert!(
            found,
            "this README snippet is not in examples/examples/readme.rs:\n{snippet}"
        );
    }
}

/// The tables of a markdown text, in the order they appear.
fn tables(text: &str) -> Vec<String> {
    let mut tables = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines().chain([""]) {
        if line.starts_with('|') {
            current.push(line);
        } else if !current.is_empty() {
            tables.push(current.join("\n"));
            current.clear();
        }
    }
    tables
}

#[test]
fn the_rustdoc_reference_tables_are_the_readmes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let reference = std::fs::read_to_string(root.join("covet-txn/docs/transactional.md"))
        .expect("the attribute's rustdoc");
    let coming_from = std::fs::read_to_string(root.join("covet-txn/docs/coming-from.md"))
        .expect("the crate root's table for newcomers");
    let tables = tables(&format!("{reference}\n{coming_from}"));
    assert!(tables.len() >= 6, "the reference has its tables");
    for table in tables {
        assert!(
            readme.contains(&table),
            "this table of covet-txn/docs/transactional.md differs from the README's:\n{table}"
        );
    }
}
