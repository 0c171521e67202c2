//! scripts/image.py builds, from the final stage of each Dockerfile, the
//! docker-archive a local kubelet imports: what the manifests run is in the
//! image, as the user they run it as (archives unpacked with `tar`; no
//! container engine).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use signalgate_tests::dockerfile::{exec_form, parse_dockerfile};
use signalgate_tests::manifests::{arr, parse_yaml_docs, read, str_of};
use signalgate_tests::process::temp_dir;
use signalgate_tests::{sidecar, workspace};

/// The Makefile's name for the built filter (`WASM :=`).
const WASM_OUTPUT: &str = "target/wasm32-wasip1/release/signalgate_filter.wasm";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One entry of a layer, as `tar -tv` lists it.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    link: Option<String>,
}

struct Image {
    config: Value,
    repo_tags: Vec<String>,
    /// Each layer's entries by path (no leading `/`, directories without a trailing one).
    layers: Vec<BTreeMap<String, Entry>>,
    layer_tars: Vec<PathBuf>,
}

impl Image {
    fn files(&self) -> &BTreeMap<String, Entry> {
        assert_eq!(self.layers.len(), 1, "one layer");
        &self.layers[0]
    }

    /// The content of a file of the (single) layer.
    fn read(&self, path: &str) -> Vec<u8> {
        let _ = self.files();
        let o = run(Command::new("tar")
            .arg("-xOf")
            .arg(&self.layer_tars[0])
            .arg(path.trim_start_matches('/')));
        assert!(o.status.success(), "{path} is not in the layer");
        o.stdout
    }

    fn strings(&self, key: &str) -> Vec<String> {
        arr(&self.config["config"][key])
            .iter()
            .map(|v| str_of(v, key).to_string())
            .collect()
    }

    /// Follows symlinks inside the image from `path` to a regular file, which it returns.
    fn resolve(&self, path: &str) -> &Entry {
        let mut path = path.trim_start_matches('/').to_string();
        for _ in 0..8 {
            let entry = self.files().get(&path);
            let entry = entry.unwrap_or_else(|| panic!("/{path} is not in the image"));
            match &entry.link {
                None => return entry,
                Some(target) if target.starts_with('/') => path = target[1..].to_string(),
                Some(target) => {
                    let dir = Path::new(&path).parent().expect("parent");
                    path = dir.join(target).to_string_lossy().into_owned();
                }
            }
        }
        panic!("symlink loop at /{path}")
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs scripts/image.py; the archive, or the builder's error output.
fn build(
    dir: &Path,
    dockerfile: &Path,
    tag: &str,
    context: &Path,
    stages: &[(&str, &Path)],
) -> Result<PathBuf, String> {
    let out = dir.join(format!("{}.tar", tag.replace([':', '/'], "_")));
    let mut cmd = Command::new(workspace::root().join("scripts/image.py"));
    cmd.arg(dockerfile)
        .args(["--tag", tag, "--out"])
        .arg(&out)
        .arg("--context")
        .arg(context);
    for (key, host) in stages {
        cmd.arg("--stage").arg(format!("{key}={}", host.display()));
    }
    let o = run(&mut cmd);
    if o.status.success() {
        Ok(out)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn unpack(archive: &Path) -> Image {
    let unpacked = archive.with_extension("unpacked");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    let o = run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&unpacked));
    assert!(o.status.success(), "tar -xf {}", archive.display());
    let json = |name: &str| -> Value {
        let text = std::fs::read_to_string(unpacked.join(name)).expect(name);
        serde_json::from_str(&text).expect("JSON")
    };
    let manifest = json("manifest.json");
    let manifest = &arr(&manifest)[0];
    let config = json(str_of(&manifest["Config"], "Config"));
    let layer_tars: Vec<PathBuf> = arr(&manifest["Layers"])
        .iter()
        .map(|l| unpacked.join(str_of(l, "layer")))
        .collect();
    let layers = layer_tars.iter().map(|l| list_layer(l)).collect();
    let repo_tags = arr(&manifest["RepoTags"])
        .iter()
        .map(|t| str_of(t, "tag").to_string())
        .collect();
    Image {
        config,
        repo_tags,
        layers,
        layer_tars,
    }
}

fn list_layer(layer: &Path) -> BTreeMap<String, Entry> {
    let o = run(Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(layer));
    assert!(o.status.success(), "tar -tvf {}", layer.display());
    let mut entries = BTreeMap::new();
    for line in String::from_utf8(o.stdout).expect("utf-8").lines() {
        // mode owner size date time name [-> target]
        let words: Vec<&str> = line.split_whitespace().collect();
        let name = words[5..].join(" ");
        let (name, link) = match name.split_once(" -> ") {
            Some((n, t)) => (n.to_string(), Some(t.to_string())),
            None => (name, None),
        };
        let entry = Entry {
            mode: words[0].to_string(),
            owner: words[1].to_string(),
            link,
        };
        entries.insert(name.trim_end_matches('/').to_string(), entry);
    }
    entries
}

/// The argument of the last `keyword` instruction of a Dockerfile's final stage.
fn final_stage(dockerfile: &Path, keyword: &str) -> Option<String> {
    let text = std::fs::read_to_string(dockerfile).expect("Dockerfile");
    let stages = parse_dockerfile(&text);
    let last = stages.last()?;
    last.all(keyword).last().map(|i| i.args.clone())
}

fn final_exec_form(dockerfile: &Path, keyword: &str) -> Vec<String> {
    exec_form(&final_stage(dockerfile, keyword).unwrap_or_else(|| panic!("no {keyword}")))
}

/// deploy/base's pod spec and the `runAsUser:runAsGroup` it runs every container as.
fn base_pod() -> (Value, String) {
    let deployment = parse_yaml_docs(&read("deploy/base/deployment.yaml")).remove(0);
    let pod = deployment["spec"]["template"]["spec"].clone();
    let psc = &pod["securityContext"];
    let user = format!("{}:{}", psc["runAsUser"], psc["runAsGroup"]);
    (pod, user)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    arr(&pod[list])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

/// A build context holding a stand-in for the built filter.
fn context_with_wasm(dir: &Path) -> PathBuf {
    let context = dir.join("context");
    let wasm = context.join(WASM_OUTPUT);
    std::fs::create_dir_all(wasm.parent().expect("dir")).expect("mkdir");
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").expect("write wasm");
    context
}

fn shipped(name: &str) -> PathBuf {
    workspace::root().join("deploy/images").join(name)
}

#[test]
fn sidecar_image_runs_the_sidecar_with_every_library_it_needs() {
    let tmp = temp_dir("images");
    let bin = sidecar::binary();
    let dockerfile = shipped("Dockerfile.sidecar");
    let tag = "signalgate.local/signalgate-sidecar:dev";
    let stages = [("build:/signalgate-sidecar", bin.as_path())];
    let archive = build(tmp.path(), &dockerfile, tag, &workspace::root(), &stages);
    let image = unpack(&archive.expect("image.py"));

    assert_eq!(image.repo_tags, [tag]);
    let (pod, user) = base_pod();
    assert_eq!(image.config["config"]["User"], user.as_str());
    assert_eq!(
        final_stage(&dockerfile, "USER").as_deref(),
        Some(user.as_str())
    );
    let entry = image.strings("Entrypoint");
    assert_eq!(entry, final_exec_form(&dockerfile, "ENTRYPOINT"));
    // The manifest runs the image's ENTRYPOINT (no command of its own).
    assert!(container(&pod, "containers", "sidecar")["command"].is_null());
    assert!(image.strings("Env").contains(&PATH_ENV.to_string()));
    let labels = &image.config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.title"],
        "signalgate-sidecar"
    );
    assert_eq!(labels["io.signalgate.port.admin"], "9090");

    let binary = image.resolve(&entry[0]);
    assert_eq!(
        (binary.mode.as_str(), binary.owner.as_str()),
        ("-rwxr-xr-x", "0/0")
    );
    let ldd = run(Command::new("ldd").arg(&bin));
    let ldd = String::from_utf8(ldd.stdout).expect("utf-8");
    let libs: Vec<&str> = ldd
        .lines()
        .filter_map(|l| l.split("=>").last()?.split_whitespace().next())
        .filter(|p| p.starts_with('/'))
        .collect();
    assert!(libs.contains(&"/lib64/ld-linux-x86-64.so.2"), "{ldd}");
    for lib in libs {
        assert!(image.resolve(lib).mode.starts_with('-'), "{lib}");
    }
    // What distroless cc-debian12:nonroot gives the process.
    let passwd = String::from_utf8(image.read("/etc/passwd")).expect("utf-8");
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    assert_eq!(image.files()["home/nonroot"].owner, "65532/65532");
    assert_eq!(image.files()["tmp"].mode, "drwxrwxrwt");
    assert!(image
        .files()
        .contains_key("etc/ssl/certs/ca-certificates.crt"));
}

#[test]
fn filter_init_image_holds_what_the_init_container_runs() {
    let tmp = temp_dir("images");
    let busybox = tmp.path().join("busybox");
    std::fs::write(&busybox, "stand-in").expect("write");
    std::fs::set_permissions(
        &busybox,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let dockerfile = shipped("Dockerfile.wasm-init");
    let tag = "signalgate.local/signalgate-filter-init:dev";
    let stages = [("busybox:/bin/busybox", busybox.as_path())];
    let context = context_with_wasm(tmp.path());
    let image = unpack(&build(tmp.path(), &dockerfile, tag, &context, &stages).expect("image.py"));

    let (pod, user) = base_pod();
    let init = container(&pod, "initContainers", "install-filter");
    let command: Vec<String> = arr(&init["command"])
        .iter()
        .map(|v| str_of(v, "command").to_string())
        .collect();
    let mut runs = image.strings("Entrypoint");
    runs.extend(image.strings("Cmd"));
    assert_eq!(
        runs, command,
        "the image's default is what the manifest runs"
    );
    assert_eq!(image.strings("Cmd"), final_exec_form(&dockerfile, "CMD"));
    assert_eq!(image.config["config"]["User"], user.as_str());
    // `/bin/busybox cp /plugin.wasm <dest>`: the program and the file it copies.
    assert_eq!(image.resolve(&command[0]).mode, "-rwxr-xr-x");
    assert!(image.resolve(&command[2]).mode.starts_with('-'));
    let paths: Vec<&str> = image.files().keys().map(String::as_str).collect();
    assert_eq!(paths, ["bin", "bin/busybox", "plugin.wasm"]);
    assert!(image.strings("Env").contains(&PATH_ENV.to_string()));
}

#[test]
fn wasm_plugin_image_is_one_layer_holding_only_plugin_wasm_and_is_reproducible() {
    let tmp = temp_dir("images");
    let context = context_with_wasm(tmp.path());
    let dockerfile = shipped("Dockerfile.wasm");
    let first = build(tmp.path(), &dockerfile, "a/filter:1", &context, &[]).expect("image.py");
    let image = unpack(&first);
    assert_eq!(image.repo_tags, ["a/filter:1"]);
    assert_eq!(
        image.layers.len(),
        1,
        "Istio ignores a module in a multi-layer image"
    );
    let paths: Vec<&String> = image.files().keys().collect();
    assert_eq!(paths, ["plugin.wasm"]);
    let layer = arr(&image.config["rootfs"]["diff_ids"]).len();
    assert_eq!(layer, 1);
    let wasm = std::fs::read(context.join(WASM_OUTPUT)).expect("wasm");
    assert_eq!(image.read("/plugin.wasm"), wasm);

    let bytes = std::fs::read(&first).expect("archive");
    std::fs::remove_file(&first).expect("rm");
    let again = build(tmp.path(), &dockerfile, "a/filter:1", &context, &[]).expect("image.py");
    assert!(
        std::fs::read(again).expect("archive") == bytes,
        "same inputs, same archive"
    );
}

#[test]
fn envoy_and_redis_test_images_run_what_the_manifests_and_the_overlay_need() {
    let tmp = temp_dir("images");
    let fixtures = workspace::root().join("tests/fixtures/cluster/images");
    // Any dynamically linked ELF stands in for the binaries.
    let fixture = |dockerfile: &str, tag: &str, stage: &str| {
        let built = build(
            tmp.path(),
            &fixtures.join(dockerfile),
            tag,
            &workspace::root(),
            &[(stage, Path::new("/bin/true"))],
        );
        unpack(&built.expect("image.py"))
    };
    let envoy = fixture(
        "Dockerfile.envoy",
        "signalgate.local/envoy:v1.40.0",
        "envoy-wheel:/envoy",
    );
    let (pod, user) = base_pod();
    let envoy_container = container(&pod, "containers", "envoy");
    let command = str_of(&envoy_container["command"][0], "command");
    assert_eq!(envoy.strings("Entrypoint"), [command]);
    assert_eq!(envoy.resolve(command).mode, "-rwxr-xr-x");
    assert_eq!(envoy.config["config"]["User"], user.as_str());
    assert!(envoy
        .resolve("/lib64/ld-linux-x86-64.so.2")
        .mode
        .starts_with('-'));

    let redis = fixture(
        "Dockerfile.redis",
        "signalgate.local/redis:dev",
        "redis:/usr/bin/redis-server",
    );
    assert_eq!(redis.strings("Entrypoint"), ["/usr/local/bin/redis-server"]);
    let cmd = redis.strings("Cmd");
    assert!(cmd.windows(2).any(|w| w == ["--save", ""]), "{cmd:?}");
    assert!(
        cmd.windows(2).any(|w| w == ["--bind", "0.0.0.0"]),
        "{cmd:?}"
    );
    assert_eq!(redis.config["config"]["User"], "65532:65532");
}

#[test]
fn a_command_in_the_final_stage_is_refused_by_name() {
    let tmp = temp_dir("images");
    let dockerfile = tmp.path().join("Dockerfile");
    // RUN in an earlier stage is fine: its output comes from --stage.
    std::fs::write(
        &dockerfile,
        "FROM debian:bookworm AS build\nRUN make\n\nFROM scratch\nCOPY --from=build /x /x\nRUN rm /x\n",
    )
    .expect("write");
    let stand_in = Path::new("/bin/true");
    let err = build(
        tmp.path(),
        &dockerfile,
        "t:1",
        tmp.path(),
        &[("build:/x", stand_in)],
    )
    .expect_err("RUN in the final stage");
    assert!(err.contains("RUN is not supported"), "{err}");

    std::fs::write(
        &dockerfile,
        "FROM debian:bookworm AS build\nRUN make\nFROM scratch\nCOPY --from=build /x /x\n",
    )
    .expect("write");
    let err = build(tmp.path(), &dockerfile, "t:1", tmp.path(), &[]).expect_err("unmapped");
    assert!(err.contains("--stage build:/x=HOST_PATH"), "{err}");
    build(
        tmp.path(),
        &dockerfile,
        "t:1",
        tmp.path(),
        &[("build:/x", stand_in)],
    )
    .expect("mapped");

    std::fs::write(&dockerfile, "FROM alpine:3.20\nUSER 1:1\n").expect("write");
    let err = build(tmp.path(), &dockerfile, "t:1", tmp.path(), &[]).expect_err("base");
    assert!(err.contains("unsupported base image alpine:3.20"), "{err}");
}
