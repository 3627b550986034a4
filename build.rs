//! Build script: the commit the binary is built from, for `--version` and the run record
//! (`CHATSPACE_GIT_SHA`, empty outside a git checkout).

use std::path::Path;
use std::process::Command;

fn main() {
    let sha = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=CHATSPACE_GIT_SHA={sha}");
    let version = if sha.is_empty() { env!("CARGO_PKG_VERSION").to_string() } else { format!("{} ({sha})", env!("CARGO_PKG_VERSION")) };
    println!("cargo:rustc-env=CHATSPACE_VERSION={version}");
    // Run again when HEAD moves (a commit, a checkout), not on every source change.
    let git = Path::new(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Some(r) = std::fs::read_to_string(git.join("HEAD")).ok().and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string())) {
            if git.join(&r).exists() {
                println!("cargo:rerun-if-changed=.git/{r}");
            }
        }
        if git.join("packed-refs").exists() {
            println!("cargo:rerun-if-changed=.git/packed-refs");
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
