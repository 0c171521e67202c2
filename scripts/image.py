#!/usr/bin/env python3
"""Builds a container image from the final stage of a Dockerfile, without docker.

No registry and no docker daemon are reachable where the local cluster runs,
so the images its kubelet needs are built here, as docker-archive tarballs
(the `docker save` format) that `ctr -n k8s.io images import` accepts. The
Dockerfiles in deploy/images/ stay the recipe: this reads the last stage of
one, so paths, user, entrypoint, cmd and labels match it by construction.

- FROM scratch: an empty root. FROM gcr.io/distroless/cc-debian12*: its
  equivalent from this Debian host (passwd/group with root and nonroot 65532,
  /home/nonroot, /tmp, CA certificates, nsswitch.conf) plus the shared
  libraries (from `ldd`) of every ELF file copied in. Any other base fails.
- COPY (optionally --chown): sources relative to the build context (the
  repository root); COPY --from=STAGE takes them from --stage mappings, since
  earlier stages are not run. USER, ENTRYPOINT, CMD (JSON form), LABEL, ENV,
  WORKDIR and EXPOSE go into the config. Anything else fails, naming it.
- Output: one deterministic layer (sorted entries, mtime 0), its config and
  manifest.json.

Usage: scripts/image.py DOCKERFILE --tag NAME:TAG --out OUT.tar
           [--context DIR] [--stage STAGE:/path/in/stage=HOST_PATH ...]
"""

import argparse
import hashlib
import io
import json
import os
import shlex
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DISTROLESS_CC = "gcr.io/distroless/cc-debian12"
USERS = {"root": 0, "nonroot": 65532}


class BuildError(Exception):
    pass


# --- Dockerfile -------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list = field(default_factory=list)  # (KEYWORD, args)


def logical_lines(text):
    """Joins `\\` continuations; drops comments (and the `# syntax=` directive)."""
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not current and not stripped):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
        else:
            yield current + stripped
            current = ""
    if current.strip():
        raise BuildError("the Dockerfile ends in a line continuation")


def parse_stages(text):
    stages = []
    for line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        # ARGs before the first FROM only parameterize FROM lines: ignored.
    if not stages:
        raise BuildError("no FROM in the Dockerfile")
    return stages


def exec_form(keyword, args):
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError(f"{keyword} {args}: only the exec (JSON) form is supported")
    return value


def key_values(keyword, args):
    """`k="v" k2=v2` (LABEL, ENV); ENV also takes the old `ENV K V` form."""
    words = shlex.split(args)
    if keyword == "ENV" and words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    pairs = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise BuildError(f"{keyword} {args}: expected key=value, got {word!r}")
        pairs[key] = value
    return pairs


# --- The image's file tree -----------------------------------------------------


@dataclass
class Entry:
    kind: str  # "dir", "file" or "link"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    source: str | None = None  # host file to read (file)
    data: bytes | None = None  # or literal content (file)
    target: str | None = None  # (link)


class Tree:
    def __init__(self):
        self.entries = {"/": Entry("dir")}

    def mkdirs(self, path, mode=0o755, uid=0, gid=0):
        parent = os.path.dirname(path)
        if parent != path:
            self.mkdirs(parent)
        existing = self.entries.get(path)
        if existing is None:
            self.entries[path] = Entry("dir", mode, uid, gid)
        elif existing.kind != "dir":
            raise BuildError(f"{path} is needed as a directory but is a {existing.kind}")

    def add(self, path, entry):
        self.mkdirs(os.path.dirname(path))
        self.entries[path] = entry

    def add_host_file(self, path, host_path, uid=0, gid=0):
        mode = stat.S_IMODE(os.stat(host_path).st_mode)
        self.add(path, Entry("file", mode, uid, gid, source=host_path))


# --- Bases --------------------------------------------------------------------


def text(content):
    return Entry("file", 0o644, data=content.encode())


def distroless_cc(tree):
    """The files of distroless cc-debian12:nonroot the manifests rely on."""
    tree.add("/etc/passwd", text(
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"))
    tree.add("/etc/group", text("root:x:0:\nnonroot:x:65532:\n"))
    tree.add("/etc/nsswitch.conf", text("hosts: files dns\n"))
    tree.mkdirs("/root", 0o700)
    tree.mkdirs("/home/nonroot", 0o700, 65532, 65532)
    tree.mkdirs("/tmp", 0o1777)
    certs = "/etc/ssl/certs/ca-certificates.crt"
    if not os.path.isfile(certs):
        raise BuildError(f"{certs} not found: install the Debian package ca-certificates")
    tree.add(certs, Entry("file", 0o644, source=certs))


def start_tree(base):
    tree = Tree()
    if base == "scratch":
        return tree
    if base.startswith(DISTROLESS_CC):
        distroless_cc(tree)
        return tree
    raise BuildError(f"unsupported base image {base} (supported: scratch, {DISTROLESS_CC}*)")


def is_elf(host_path):
    with open(host_path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def needed_libraries(host_path):
    """The absolute paths `ldd` lists for an ELF file (none if it is static)."""
    run = subprocess.run(["ldd", host_path], capture_output=True, text=True)
    if run.returncode != 0:
        if "not a dynamic executable" in run.stdout + run.stderr:
            return []
        raise BuildError(f"ldd {host_path}: {run.stderr.strip()}")
    libs = []
    for line in run.stdout.splitlines():
        if "not found" in line:
            raise BuildError(f"ldd {host_path}: {line.strip()}")
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            libs.append(path)
    return libs


def add_library(tree, path):
    """Adds `path` as on the host: every symlink name on the way, then the real file."""
    while os.path.islink(path):
        target = os.readlink(path)
        tree.add(path, Entry("link", 0o777, target=target))
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    if path not in tree.entries:
        tree.add_host_file(path, path)


def add_libraries(tree):
    copied = [e.source for e in list(tree.entries.values()) if e.kind == "file" and e.source]
    for source in copied:
        if is_elf(source):
            for lib in needed_libraries(source):
                add_library(tree, lib)


# --- Instructions -------------------------------------------------------------


def owner(chown):
    def number(name):
        return int(name) if name.isdigit() else USERS[name]

    user, _, group = chown.partition(":")
    try:
        return number(user), number(group or user)
    except KeyError as e:
        raise BuildError(f"--chown={chown}: unknown user or group {e}") from None


def copy_sources(args, context, stages):
    """(--from, --chown, [(host path, name in the stage)], destination) of a COPY."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    unknown = set(flags) - {"from", "chown"}
    if unknown:
        raise BuildError(f"COPY {args}: unsupported flag --{unknown.pop()}")
    if len(words) < 2:
        raise BuildError(f"COPY {args}: needs a source and a destination")
    *names, dest = words
    stage = flags.get("from")
    sources = []
    for name in names:
        if stage is None:
            host = os.path.join(context, name)
        else:
            key = f"{stage}:{name}"
            if key not in stages:
                raise BuildError(
                    f"COPY --from={stage} {name}: not mapped; pass --stage {key}=HOST_PATH")
            host = stages[key]
        if not os.path.exists(host):
            raise BuildError(f"COPY {name}: {host} does not exist")
        sources.append((host, name))
    return flags.get("chown"), sources, dest


def copy(tree, args, context, stages, workdir):
    chown, sources, dest = copy_sources(args, context, stages)
    uid, gid = owner(chown) if chown else (0, 0)
    dest = os.path.join(workdir, dest)
    into_dir = dest.endswith("/") or len(sources) > 1
    dest = os.path.normpath(dest)
    for host, name in sources:
        if os.path.isdir(host):  # a directory's contents, as docker does
            tree.mkdirs(dest, uid=uid, gid=gid)
            for root, dirs, files in os.walk(host):
                rel = os.path.relpath(root, host)
                for d in dirs:
                    tree.mkdirs(os.path.normpath(os.path.join(dest, rel, d)), uid=uid, gid=gid)
                for f in files:
                    path = os.path.normpath(os.path.join(dest, rel, f))
                    tree.add_host_file(path, os.path.realpath(os.path.join(root, f)), uid, gid)
        else:
            path = os.path.join(dest, os.path.basename(name)) if into_dir else dest
            tree.add_host_file(path, os.path.realpath(host), uid, gid)


def build(stage, context, stages):
    """The tree and the config's `config` object of the final stage."""
    tree = start_tree(stage.base)
    env = {"PATH": DEFAULT_PATH.split("=", 1)[1]}
    config = {"User": "", "Entrypoint": None, "Cmd": None, "Labels": {},
              "WorkingDir": "", "ExposedPorts": {}}
    for keyword, args in stage.instructions:
        workdir = config["WorkingDir"] or "/"
        if keyword == "COPY":
            copy(tree, args, context, stages, workdir)
        elif keyword == "USER":
            config["User"] = args
        elif keyword in ("ENTRYPOINT", "CMD"):
            config[keyword.capitalize()] = exec_form(keyword, args)
        elif keyword == "LABEL":
            config["Labels"].update(key_values(keyword, args))
        elif keyword == "ENV":
            env.update(key_values(keyword, args))
        elif keyword == "WORKDIR":
            config["WorkingDir"] = os.path.normpath(os.path.join(workdir, args))
            tree.mkdirs(config["WorkingDir"])
        elif keyword == "EXPOSE":
            for port in args.split():
                config["ExposedPorts"][port if "/" in port else f"{port}/tcp"] = {}
        else:
            raise BuildError(
                f"{keyword} is not supported in the final stage (nothing is run here)")
    if stage.base != "scratch":
        add_libraries(tree)
    config["Env"] = [f"{k}={v}" for k, v in env.items()]
    return tree, {k: v for k, v in config.items() if v not in (None, {}, "")}


# --- docker-archive -------------------------------------------------------------


def tar_info(name, size=0, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0):
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.uid, info.gid, info.mtime = size, kind, mode, uid, gid, 0
    return info


def write_layer(tree, f):
    with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as layer:
        for path in sorted(tree.entries):
            if path == "/":
                continue
            e = tree.entries[path]
            name = path.lstrip("/")
            if e.kind == "dir":
                layer.addfile(tar_info(name + "/", 0, tarfile.DIRTYPE, e.mode, e.uid, e.gid))
            elif e.kind == "link":
                info = tar_info(name, 0, tarfile.SYMTYPE, e.mode, e.uid, e.gid)
                info.linkname = e.target
                layer.addfile(info)
            elif e.data is not None:
                layer.addfile(tar_info(name, len(e.data), mode=e.mode, uid=e.uid, gid=e.gid),
                              io.BytesIO(e.data))
            else:
                with open(e.source, "rb") as src:
                    size = os.fstat(src.fileno()).st_size
                    layer.addfile(tar_info(name, size, mode=e.mode, uid=e.uid, gid=e.gid), src)


def sha256_of(f):
    f.seek(0)
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    f.seek(0)
    return digest.hexdigest()


def write_archive(tree, config, tag, out):
    out_dir = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryFile(dir=out_dir) as layer:
        write_layer(tree, layer)
        layer_sha = sha256_of(layer)
        image_config = json.dumps({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_sha}"]},
        }, indent=2, sort_keys=True).encode()
        config_name = hashlib.sha256(image_config).hexdigest() + ".json"
        manifest = json.dumps([{"Config": config_name, "RepoTags": [tag],
                                "Layers": [f"{layer_sha}/layer.tar"]}]).encode()
        partial = out + ".partial"
        with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as archive:
            archive.addfile(tar_info(f"{layer_sha}/", 0, tarfile.DIRTYPE, 0o755))
            size = layer.seek(0, os.SEEK_END)
            layer.seek(0)
            archive.addfile(tar_info(f"{layer_sha}/layer.tar", size), layer)
            archive.addfile(tar_info(config_name, len(image_config)), io.BytesIO(image_config))
            archive.addfile(tar_info("manifest.json", len(manifest)), io.BytesIO(manifest))
        os.replace(partial, out)


# --- Command line -------------------------------------------------------------


def stage_mappings(values):
    """`STAGE:/path=HOST_PATH` -> {"STAGE:/path": HOST_PATH}."""
    mappings = {}
    for value in values:
        key, eq, host = value.partition("=")
        if not eq or ":/" not in key:
            raise BuildError(f"--stage {value}: expected STAGE:/path/in/stage=HOST_PATH")
        mappings[key] = host
    return mappings


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dockerfile")
    parser.add_argument("--tag", required=True, help="NAME:TAG for manifest.json's RepoTags")
    parser.add_argument("--out", required=True, help="the docker-archive tar to write")
    parser.add_argument("--context", default=REPO, help="build context (default: the repository)")
    parser.add_argument("--stage", action="append", default=[],
                        help="STAGE:/path/in/stage=HOST_PATH, for COPY --from=STAGE")
    args = parser.parse_args(argv)
    try:
        with open(args.dockerfile) as f:
            stage = parse_stages(f.read())[-1]
        tree, config = build(stage, args.context, stage_mappings(args.stage))
        write_archive(tree, config, args.tag, args.out)
    except BuildError as e:
        print(f"image.py: {args.dockerfile}: {e}", file=sys.stderr)
        return 1
    print(f"image.py: {args.out} ({args.tag}, {len(tree.entries) - 1} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
