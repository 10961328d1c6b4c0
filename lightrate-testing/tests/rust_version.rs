//! The workspace's `rust-version` is true to its dependencies: no crate the published crates
//! build with (normal and build dependencies, every feature, on this target, as locked) needs
//! a newer Rust than the workspace declares. Read from `cargo metadata` and `cargo tree`, the
//! resolver's own answers, offline.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

/// The crates a user of lightrate builds.
const PUBLISHED: [&str; 6] = [
    "lightrate",
    "lightrate-core",
    "lightrate-tower",
    "lightrate-actix",
    "lightrate-redis",
    "lightrate-server",
];

fn version(text: &str) -> Vec<u64> {
    text.split('.').map(|part| part.parse().unwrap()).collect()
}

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// This machine's target triple (`rustc -vV`'s `host:`).
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc).arg("-vV").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn rust_version_is_at_least_what_every_dependency_needs() {
    // Filtered to this target: offline, the registry holds only what this target builds (the
    // other targets' crates, `windows-sys` and the like, were never downloaded).
    let host = host();
    let metadata: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--filter-platform",
        &host,
    ]))
    .unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let declared = packages
        .iter()
        .find(|p| p["name"] == "lightrate-core")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .unwrap();

    let mut args = vec![
        "tree",
        "--offline",
        "--all-features",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ];
    for name in PUBLISHED {
        args.extend(["-p", name]);
    }
    // `{p}` is "name vX.Y.Z" (and a path for workspace members).
    let built: HashSet<(String, String)> = cargo(&args)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_owned();
            let version = words.next()?.trim_start_matches('v').to_owned();
            Some((name, version))
        })
        .collect();
    assert!(built.len() > 50, "{} crates built?", built.len());

    let mut needs: Vec<(Vec<u64>, String)> = packages
        .iter()
        .filter(|p| {
            let key = (
                p["name"].as_str().unwrap().to_owned(),
                p["version"].as_str().unwrap().to_owned(),
            );
            built.contains(&key)
        })
        .filter_map(|p| {
            let needed = p["rust_version"].as_str()?;
            let name = format!("{} {}", p["name"].as_str()?, p["version"].as_str()?);
            Some((version(needed), name))
        })
        .collect();
    needs.sort();
    let (newest, by) = needs.last().unwrap();
    println!("rust-version {declared:?}; the newest a dependency needs: {newest:?} ({by})");
    assert!(
        declared >= *newest,
        "rust-version {declared:?} is older than {by} needs ({newest:?}): raise it in the \
         workspace's Cargo.toml"
    );
}
