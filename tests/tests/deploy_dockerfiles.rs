//! The Dockerfiles agree with the build and the manifests (no container
//! engine here: files, users, ports, entry points).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use signalgate_tests::dockerfile::{
    copy_parts, exec_form, label_pairs, parse_dockerfile, Instruction, Stage,
};
use signalgate_tests::manifests::{
    arr, container_port, env_value, port_of, read, str_of, Rendered,
};
use signalgate_tests::workspace;

/// The Makefile's name for the built filter (`WASM :=`).
const WASM_OUTPUT: &str = "target/wasm32-wasip1/release/signalgate_filter.wasm";
/// The Makefile's name for the built native module (`make native`).
const NATIVE_OUTPUT: &str = "target/release/libsignalgate_edge_native.so";

/// Whether `path` is excluded by a .dockerignore's `patterns` (last match
/// wins; `*` matches everything, otherwise a pattern is a path or a prefix
/// directory).
fn ignored(patterns: &[String], path: &str) -> bool {
    let mut excluded = false;
    for p in patterns {
        let (negated, pat) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let pat = pat.trim_end_matches('/');
        let matches = pat == "*" || path == pat || path.starts_with(&format!("{pat}/"));
        if matches {
            excluded = !negated;
        }
    }
    excluded
}

fn dockerignore(dockerfile: &Path) -> Vec<String> {
    let path = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (each Dockerfile keeps its own)", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// An init image (`dockerfile`) holds `file`, built by the Makefile as
/// `output`, and its ENTRYPOINT and CMD are the command of `r`'s
/// install-filter init container, which is returned.
fn check_init_image<'a>(
    parsed: &BTreeMap<String, Vec<Stage>>,
    dockerfile: &str,
    r: &'a Rendered,
    file: &str,
    output: &str,
) -> &'a Value {
    let image = parsed[dockerfile].last().expect("stage");
    let dests: BTreeMap<String, Vec<String>> = image
        .all("COPY")
        .into_iter()
        .map(|c| {
            let (_, sources, dest) = copy_parts(c);
            (dest, sources)
        })
        .collect();
    assert_eq!(
        dests.get(file),
        Some(&vec![output.to_string()]),
        "{dockerfile}"
    );
    let init = arr(&r.pod_spec()["initContainers"])
        .iter()
        .find(|c| c["name"] == "install-filter")
        .expect("install-filter");
    let cmd: Vec<String> = arr(&init["command"])
        .iter()
        .map(|v| str_of(v, "cmd").to_string())
        .collect();
    assert!(
        dests.contains_key(&cmd[0]),
        "{}: the init container runs {}, which {dockerfile} lacks",
        r.dir,
        cmd[0]
    );
    assert_eq!(cmd[1..3], ["cp", file], "{}", r.dir);
    let entry = exec_form(&image.all("ENTRYPOINT")[0].args);
    assert_eq!(
        entry,
        cmd[..3],
        "{dockerfile}: the image's ENTRYPOINT does what the manifest runs"
    );
    assert_eq!(
        exec_form(&image.all("CMD")[0].args),
        cmd[3..],
        "{dockerfile}: the image's default target is the manifest's"
    );
    // The image's user is the one the pod runs it as.
    let user = &image.all("USER").last().expect("USER").args;
    let psc = &r.pod_spec()["securityContext"];
    assert_eq!(
        *user,
        format!("{}:{}", psc["runAsUser"], psc["runAsGroup"]),
        "{dockerfile}: USER vs {}'s runAsUser:runAsGroup",
        r.dir
    );
    init
}

#[test]
fn dockerfiles_match_the_build_and_the_manifests() {
    let makefile = read("Makefile");
    assert!(
        makefile.contains(&format!("WASM := {WASM_OUTPUT}")),
        "the Makefile names {WASM_OUTPUT} as the filter build output"
    );
    assert!(
        makefile.contains(&format!("ls -l {NATIVE_OUTPUT}")),
        "make native builds {NATIVE_OUTPUT}"
    );
    let images_dir = workspace::root().join("deploy/images");
    let mut dockerfiles: Vec<PathBuf> = std::fs::read_dir(&images_dir)
        .expect("deploy/images")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Dockerfile") && !n.ends_with(".dockerignore"))
        })
        .collect();
    dockerfiles.sort();
    let names: Vec<String> = dockerfiles
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "Dockerfile.native-init",
            "Dockerfile.sidecar",
            "Dockerfile.wasm",
            "Dockerfile.wasm-init"
        ]
    );

    let mut parsed = BTreeMap::new();
    for path in &dockerfiles {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let stages = parse_dockerfile(&std::fs::read_to_string(path).expect("read Dockerfile"));
        let ignore = dockerignore(path);
        let mut stage_names = BTreeSet::new();
        for stage in &stages {
            // Base images pinned (or scratch, or an earlier stage).
            let from = &stage.from;
            assert!(
                from == "scratch"
                    || stage_names.contains(from)
                    || (from.contains(':') && !from.ends_with(":latest")),
                "{name}: FROM {from} is not pinned"
            );
            for copy in stage.all("COPY").into_iter().chain(stage.all("ADD")) {
                let (from_stage, sources, _) = copy_parts(copy);
                match from_stage {
                    Some(s) => assert!(
                        stage_names.contains(&s) || s.contains(':'),
                        "{name}: COPY --from={s} names no earlier stage"
                    ),
                    None => {
                        for src in sources {
                            let src = src
                                .trim_start_matches("./")
                                .trim_end_matches('/')
                                .to_string();
                            assert!(
                                workspace::root().join(&src).exists() || makefile.contains(&src),
                                "{name}: COPY {src}: neither in the repository nor a build output of the Makefile"
                            );
                            assert!(
                                !ignored(&ignore, &src),
                                "{name}: COPY {src} is excluded by its .dockerignore"
                            );
                        }
                    }
                }
            }
            assert!(
                stage.all("EXPOSE").is_empty(),
                "{name}: ports are documented, not EXPOSEd"
            );
            if let Some(n) = &stage.name {
                stage_names.insert(n.clone());
            }
        }
        // The image runs as a numeric, non-root user.
        let last = stages.last().expect("a stage");
        let users = last.all("USER");
        let user = &users
            .last()
            .unwrap_or_else(|| panic!("{name}: no USER in the final stage"))
            .args;
        let ids: Vec<u32> = user
            .split(':')
            .map(|id| {
                id.parse()
                    .unwrap_or_else(|_| panic!("{name}: USER {user} is not numeric"))
            })
            .collect();
        assert!(ids.iter().all(|id| *id != 0), "{name}: USER {user} is root");
        parsed.insert(name, stages);
    }

    let base = Rendered::of("deploy/base");
    let istio = Rendered::of("deploy/istio");

    // Dockerfile.wasm: Istio's compat format, one layer with plugin.wasm.
    let wasm = parsed["Dockerfile.wasm"].last().expect("stage");
    assert_eq!(wasm.from, "scratch");
    let layers: Vec<&Instruction> = wasm
        .instructions
        .iter()
        .filter(|i| matches!(i.keyword.as_str(), "COPY" | "ADD" | "RUN"))
        .collect();
    assert_eq!(layers.len(), 1, "Dockerfile.wasm: exactly one layer");
    let (_, sources, dest) = copy_parts(layers[0]);
    assert_eq!(sources, [WASM_OUTPUT]);
    assert_eq!(dest, "/plugin.wasm");

    // Dockerfile.wasm-init and Dockerfile.native-init: what the init
    // container runs is in the image.
    let init = check_init_image(
        &parsed,
        "Dockerfile.wasm-init",
        &base,
        "/plugin.wasm",
        WASM_OUTPUT,
    );
    let native = Rendered::of("deploy/overlays/native");
    let native_init = check_init_image(
        &parsed,
        "Dockerfile.native-init",
        &native,
        "/libsignalgate_edge_native.so",
        NATIVE_OUTPUT,
    );

    // Dockerfile.sidecar: builds and runs the sidecar binary; its documented
    // ports are the manifests' and the sidecar's defaults.
    let sidecar_stages = &parsed["Dockerfile.sidecar"];
    let bin = "signalgate-sidecar";
    assert!(read("sidecar/Cargo.toml").contains(&format!("name = \"{bin}\"")));
    assert!(
        sidecar_stages[0]
            .all("RUN")
            .iter()
            .any(|r| r.args.contains(&format!("-p {bin}"))),
        "Dockerfile.sidecar builds {bin}"
    );
    // Cargo loads every workspace member even to build one package: the
    // build stage must copy each member's directory.
    let build_sources: Vec<String> = sidecar_stages[0]
        .all("COPY")
        .into_iter()
        .flat_map(|c| copy_parts(c).1)
        .collect();
    let manifest = read("Cargo.toml");
    let members: Vec<&str> = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .expect("Cargo.toml lists the workspace members on one line")
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    assert!(members.len() >= 5, "{members:?}");
    for member in members {
        assert!(
            build_sources
                .iter()
                .any(|src| member == src || member.starts_with(&format!("{src}/"))),
            "Dockerfile.sidecar does not copy workspace member {member}: cargo would not load the workspace"
        );
    }
    let last = sidecar_stages.last().expect("stage");
    let entry = exec_form(&last.all("ENTRYPOINT")[0].args);
    let copied: Vec<String> = last
        .all("COPY")
        .into_iter()
        .map(|c| copy_parts(c).2)
        .collect();
    assert!(copied.contains(&entry[0]) && entry[0].ends_with(&format!("/{bin}")));
    let labels: BTreeMap<String, String> = last
        .all("LABEL")
        .into_iter()
        .flat_map(|l| label_pairs(&l.args))
        .collect();
    let port_label = |key: &str| -> u16 {
        labels
            .get(key)
            .unwrap_or_else(|| panic!("Dockerfile.sidecar has no LABEL {key}"))
            .parse()
            .expect("port number")
    };
    let signals_port = port_label("io.signalgate.port.signals");
    let admin_port = port_label("io.signalgate.port.admin");
    let knob = |name: &str| {
        signalgate_sidecar::config::knobs::KNOBS
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.default)
            .expect("knob")
    };
    assert_eq!(
        port_of(knob("LISTEN")),
        signals_port,
        "the sidecar's default signal port"
    );
    assert_eq!(
        port_of(knob("ADMIN_LISTEN")),
        admin_port,
        "the sidecar's default admin port"
    );
    for r in [&base, &istio] {
        let s = r.sidecar();
        assert_eq!(
            port_of(env_value(s, "SIGNALGATE_LISTEN")),
            signals_port,
            "{}",
            r.dir
        );
        assert_eq!(
            port_of(env_value(s, "SIGNALGATE_ADMIN_LISTEN")),
            admin_port,
            "{}",
            r.dir
        );
        assert_eq!(
            container_port(s, "admin"),
            Some(admin_port as u64),
            "{}",
            r.dir
        );
    }
    assert_eq!(
        container_port(istio.sidecar(), "signals"),
        Some(signals_port as u64)
    );

    // The manifests name these images, tagged with the workspace version.
    let version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace version")
        .to_string();
    let image_of = |container: &Value| str_of(&container["image"], "image").to_string();
    let init_ref = image_of(init);
    let sidecar_ref = image_of(base.sidecar());
    assert!(
        init_ref.ends_with(&format!("/signalgate-filter-init:{version}")),
        "{init_ref}"
    );
    let native_init_ref = image_of(native_init);
    assert!(
        native_init_ref.ends_with(&format!("/signalgate-edge-native-init:{version}")),
        "{native_init_ref}"
    );
    assert!(
        sidecar_ref.ends_with(&format!("/signalgate-sidecar:{version}")),
        "{sidecar_ref}"
    );
    assert_eq!(image_of(istio.sidecar()), sidecar_ref);
    let wp_url = str_of(&istio.one("WasmPlugin")["spec"]["url"], "url");
    assert!(
        wp_url.starts_with("oci://") && wp_url.ends_with(&format!("/signalgate-filter:{version}")),
        "{wp_url}"
    );
}
