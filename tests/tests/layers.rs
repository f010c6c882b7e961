//! The runtime's modules form layers, each importing only from the layers
//! below it. The layers are the table in the crate documentation
//! (`covet-txn/src/lib.rs`); this test reads that table and every
//! `crate::`/`super::` path in the sources, and fails on an import from a
//! higher layer, on a module the table does not place, and on a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../covet-txn/src");

/// Every `.rs` file under `dir`, by module path (`session::slot`, `call`).
fn modules(dir: &Path, root: &Path, found: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if !path.ends_with("assets") {
                modules(&path, root, found);
            }
            continue;
        }
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let relative = path.strip_prefix(root).unwrap_or(&path).with_extension("");
        let mut parts: Vec<String> = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts
            .last()
            .is_some_and(|last| last == "mod" || last == "lib")
        {
            parts.pop();
        }
        found.insert(parts.join("::"), path);
    }
}

/// The layers, lowest first: the module names in each row of the crate
/// documentation's table.
fn layers(lib: &str) -> Vec<Vec<String>> {
    lib.lines()
        .filter_map(|line| line.strip_prefix("//! | "))
        .filter(|row| !row.starts_with("layer") && !row.starts_with("---"))
        .map(|row| {
            let modules = row.split(" | ").nth(1).unwrap_or_default();
            modules
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|name| name.trim_end_matches('/').to_owned())
                .collect()
        })
        .collect()
}

/// The layer of a module: that of the longest table entry it is, or is
/// inside of.
fn layer_of(module: &str, layers: &[Vec<String>]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (index, names) in layers.iter().enumerate() {
        for name in names {
            let matches = module == name || module.starts_with(&format!("{name}::"));
            if matches && best.is_none_or(|(length, _)| name.len() > length) {
                best = Some((name.len(), index));
            }
        }
    }
    best.map(|(_, index)| index)
}

/// The modules `module`'s source imports from, resolved against `known`.
fn imports(module: &str, source: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let source = match source.find("#[cfg(test)]\nmod tests") {
        Some(tests) => &source[..tests],
        None => source,
    };
    let mut found = BTreeSet::new();
    let bytes = source.as_bytes();
    for (start, _) in source.match_indices("::") {
        // The path this `::` belongs to, from its first segment.
        let mut begin = start;
        while begin > 0
            && (bytes[begin - 1].is_ascii_alphanumeric()
                || bytes[begin - 1] == b'_'
                || bytes[begin - 1] == b':')
        {
            begin -= 1;
        }
        let mut end = start + 2;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        let path = &source[begin..end];
        let mut segments: Vec<&str> = path
            .split("::")
            .filter(|segment| !segment.is_empty())
            .collect();
        let mut base: Vec<String> = match segments.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") => {
                let mut parent: Vec<String> = module.split("::").map(str::to_owned).collect();
                parent.pop();
                parent
            }
            _ => continue,
        };
        segments.remove(0);
        base.extend(segments.iter().map(|segment| (*segment).to_owned()));
        // The longest prefix that is a module.
        while !base.is_empty() {
            let candidate = base.join("::");
            if known.contains_key(&candidate) {
                let related = candidate == module
                    || module.starts_with(&format!("{candidate}::"))
                    || candidate.starts_with(&format!("{module}::"));
                if !related && !candidate.is_empty() {
                    found.insert(candidate);
                }
                break;
            }
            base.pop();
        }
    }
    found
}

#[test]
fn runtime_modules_import_only_from_lower_layers_and_form_no_circle() {
    let root = PathBuf::from(SOURCES);
    let mut known = BTreeMap::new();
    modules(&root, &root, &mut known);
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("reads lib.rs");
    let layers = layers(&lib);
    assert!(
        layers.len() > 5,
        "the crate docs list the layers: {layers:?}"
    );

    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &known {
        if module.is_empty() || module == "__private" || module == "private" {
            continue;
        }
        let Some(own) = layer_of(module, &layers) else {
            problems.push(format!("`{module}` is in no layer of the table in lib.rs"));
            continue;
        };
        let source = std::fs::read_to_string(path).expect("reads a source file");
        for target in imports(module, &source, &known) {
            match layer_of(&target, &layers) {
                Some(theirs) if theirs > own => problems.push(format!(
                    "`{module}` (layer {own}) imports `{target}` (layer {theirs}), a higher layer"
                )),
                _ => {}
            }
            edges.entry(module.clone()).or_default().insert(target);
        }
    }
    problems.extend(circles(&edges));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Import circles, found by walking each module's imports.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((module, path)) = stack.pop() {
            for next in edges.get(&module).into_iter().flatten() {
                if next == start {
                    found.push(format!("circle: {} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}
