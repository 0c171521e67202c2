//! Which Envoy this module runs in, and whether its ABI is the one the
//! module was built for.
//!
//! Envoy does not tell a module its ABI version: it only compares the
//! version string the module returns from `on_program_init` with its own,
//! and on a mismatch merely logs a warning and loads the module anyway. A
//! module whose callbacks changed shape would then misbehave. So the module
//! checks for itself: it asks the running binary (`/proc/self/exe
//! --version`, which prints e.g. `envoy  version: <sha>/1.40.0/Clean/...`)
//! and refuses anything but the Envoy minor versions its ABI supports
//! (Envoy's rule: a module built for 1.Y runs on 1.Y and 1.(Y+1)).
//! Returning null from `on_program_init` makes Envoy unload the module and
//! refuse the configuration that names it.

use std::process::Command;

/// The Envoy release the bindings in [`crate::abi`] were written against.
pub const BUILT_FOR: (u32, u32) = (1, 40);

/// An Envoy release, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvoyVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for EnvoyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The release in the output of `envoy --version`: the first
/// `/`-separated field after `version:` that reads `N.N.N`.
pub fn parse(output: &str) -> Option<EnvoyVersion> {
    let (_, after) = output.split_once("version:")?;
    after.trim().split('/').find_map(|field| {
        let mut parts = field.split('.');
        let mut next = || parts.next()?.parse::<u32>().ok();
        let v = EnvoyVersion {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        parts.next().is_none().then_some(v)
    })
}

/// `Ok` if a module built for Envoy `built_for` (major, minor) runs on
/// `v`, else why not.
pub fn supported(v: EnvoyVersion, built_for: (u32, u32)) -> Result<(), String> {
    let (major, minor) = built_for;
    if v.major == major && (v.minor == minor || v.minor == minor + 1) {
        Ok(())
    } else {
        Err(format!(
            "this module is built for the dynamic-module ABI of Envoy {major}.{minor} \
             (runs on {major}.{minor} and {major}.{}), not Envoy {v}: rebuild it against \
             this Envoy's abi.h",
            minor + 1
        ))
    }
}

/// Asks the running Envoy binary for its version.
pub fn running() -> Result<EnvoyVersion, String> {
    let out = Command::new("/proc/self/exe")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run /proc/self/exe --version: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).ok_or_else(|| format!("no Envoy version in {:?}", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: fn(u32, u32, u32) -> EnvoyVersion = |major, minor, patch| EnvoyVersion {
        major,
        minor,
        patch,
    };

    #[test]
    fn reads_the_release_from_envoys_version_line() {
        let line = "\n/x/envoy  version: 2f5b4e7c1d/1.40.0/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(parse(line), Some(V(1, 40, 0)));
        let dev = "envoy  version: abc/1.41.0-dev/Modified/DEBUG/BoringSSL-FIPS";
        assert_eq!(parse(dev), None, "1.41.0-dev is not N.N.N");
        assert_eq!(parse("envoy 1.40.0"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn runs_on_the_release_it_is_built_for_and_the_next() {
        assert_eq!(supported(V(1, 40, 0), BUILT_FOR), Ok(()));
        assert_eq!(supported(V(1, 40, 7), BUILT_FOR), Ok(()));
        assert_eq!(supported(V(1, 41, 2), BUILT_FOR), Ok(()));
    }

    #[test]
    fn refuses_older_and_later_releases_naming_both() {
        for v in [V(1, 39, 3), V(1, 42, 0), V(2, 40, 0)] {
            let why = supported(v, BUILT_FOR).unwrap_err();
            assert!(why.contains(&v.to_string()), "{why}");
            assert!(why.contains("Envoy 1.40"), "{why}");
        }
    }
}
