// The build scripts' shared part (client/build.rs and
// services/server/build.rs include it as a module): records the git commit
// a binary is built from as `NATTER_COMMIT`, for `--version` and
// `natter_build_info`: the `NATTER_COMMIT` environment variable when set (a
// Docker build, where there is no `.git`), else git's `HEAD`, else
// `unknown` (a source tarball).

use std::path::Path;
use std::process::Command;

/// Sets `NATTER_COMMIT` for the crate being built.
pub fn record() {
    println!("cargo:rerun-if-env-changed=NATTER_COMMIT");
    let commit = std::env::var("NATTER_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NATTER_COMMIT={}", commit.trim());
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// `HEAD`'s short hash; rebuilds when `HEAD` or the branch it names moves.
fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        // A path that does not exist would make cargo rerun this every build.
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
            .filter(|p| p.exists())
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}
