//! Where the built artefacts of this workspace live.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        None => root().join("target"),
    }
}

/// An artefact named by `env` if set, else `default`; panics with `hint` when missing.
pub fn artefact(env: &str, default: PathBuf, hint: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.exists(),
        "{} not found ({env} unset or wrong): {hint}",
        path.display()
    );
    path
}

/// A tool the project installs (scripts/install-deps.sh): `env` if set, else
/// `name` on `PATH`; panics naming `make deps` and the Debian `package`.
pub fn installed_binary(env: &str, name: &str, package: &str) -> PathBuf {
    let found = match std::env::var_os(env) {
        Some(bin) => Some(PathBuf::from(bin)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        }),
    };
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found (neither {env} nor PATH has it): install it with \
             `make deps` (scripts/install-deps.sh, Debian package {package})"
        )
    })
}
