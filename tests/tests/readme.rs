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
