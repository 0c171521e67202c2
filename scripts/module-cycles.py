#!/usr/bin/env python3
"""Finds import loops between the file-level modules of each crate.

For every crate of the workspace (the `members` of the root Cargo.toml; each
`src/lib.rs`, `src/main.rs`, `src/bin/*.rs` and `tests/*.rs` is a crate of its
own), the modules are found from the crate root through its `mod x;`
declarations (`a/mod.rs` is module `a`), and an edge "A refers to B" is drawn
for every path into another module of the same crate:

- `use crate::...`, `use super::...`, `use self::...` and `use child::...`,
  groups included (`use crate::{a::X, b::{Y, Z}}`);
- `crate::x::y`, `super::x` and `child::x` paths in code.

A parent's `mod child;` declaration is not an edge, but a parent using an item
of its child is (`store/mod.rs` -> `store/memory.rs`). Comments, doc comments
and string literals are ignored. A path through a re-export (`crate::Text`
when the root has `pub use text::Text`) counts as a reference to the module
the item comes from. Inline modules (`mod tests { ... }`) belong to their file.

Prints every cycle, with where each of its edges is written, and exits 1 if
there is any; otherwise prints a one-line summary and exits 0.

Usage: scripts/module-cycles.py [--root DIR] [CRATE_DIR...]
       scripts/module-cycles.py --self-test
"""

import os
import re
import sys
import tempfile

# ---------------------------------------------------------------- lexing

IDENT = re.compile(r"(?!\d)\w+")
NUMBER = re.compile(r"\d[\w.]*")
RAW_STRING = re.compile(r'b?r#*"')


def tokens(text):
    """(token, line) pairs of Rust source: identifiers, `::` and single
    punctuation characters; comments, strings and char literals dropped."""
    out = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == "\n"
                    i += 1
        elif raw_string_start(text, i):
            j = i
            while text[j] in "br":
                j += 1
            hashes = 0
            while text[j] == "#":
                hashes, j = hashes + 1, j + 1
            end = text.find('"' + "#" * hashes, j + 1)
            end = n if end < 0 else end + 1 + hashes
            line += text.count("\n", i, end)
            i = end
        elif c == '"' or (c == "b" and text.startswith('b"', i)):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            line += text.count("\n", i, j)
            i = j + 1
        elif c == "'" or (c == "b" and text.startswith("b'", i)):
            j = i + (2 if c == "b" else 1)
            if j < n and text[j] == "\\":
                k = text.find("'", j + 2)
                i = n if k < 0 else k + 1
            elif j + 1 < n and text[j + 1] == "'":
                i = j + 2
            else:  # a lifetime or label
                i = j
        elif c == "$" and text.startswith("$crate", i):
            out.append(("crate", line))
            i += len("$crate")
        elif c.isalpha() or c == "_":
            m = IDENT.match(text, i)
            end = m.end()
            word = m.group(0)
            if word == "r" and text.startswith("#", end):  # r#ident
                raw = IDENT.match(text, end + 1)
                if raw:
                    word, end = raw.group(0), raw.end()
            out.append((word, line))
            i = end
        elif c.isdigit():
            i = NUMBER.match(text, i).end()
        elif text.startswith("::", i):
            out.append(("::", line))
            i += 2
        else:
            out.append((c, line))
            i += 1
    return out


def raw_string_start(text, i):
    return RAW_STRING.match(text, i) is not None


def is_ident(tok):
    return IDENT.fullmatch(tok) is not None


# ---------------------------------------------------------------- parsing


class File:
    """One source file: its module path, the modules declared in it, its
    `use` trees and its code paths, each tagged with the (inline) module
    it is written in and its line."""

    def __init__(self, path, module):
        self.path = path
        self.module = module  # tuple of names, () for the crate root
        self.children = []  # (name, #[path] or None, scope, inline?)
        self.uses = []  # (scope, segments, alias or None, line)
        self.paths = []  # (scope, segments, line)


def parse_use_tree(toks, i, prefix, out):
    """Parses a use tree at toks[i]; appends (segments, alias) to out;
    returns the index after the tree."""
    segs = list(prefix)
    while i < len(toks):
        tok = toks[i][0]
        if tok == "{":
            i += 1
            while i < len(toks) and toks[i][0] != "}":
                i = parse_use_tree(toks, i, segs, out)
                if i < len(toks) and toks[i][0] == ",":
                    i += 1
            return i + 1
        if tok == "*":
            out.append((segs + ["*"], None))
            return i + 1
        if is_ident(tok):
            segs.append(tok)
            i += 1
            if i < len(toks) and toks[i][0] == "::":
                i += 1
                continue
            alias = None
            if i + 1 < len(toks) and toks[i][0] == "as":
                alias = toks[i + 1][0]
                i += 2
            out.append((segs, alias))
            return i
        return i + 1
    return i


def parse_file(f, text):
    toks = tokens(text)
    scope = [()]  # inline module stack, relative to the file's module
    braces = []  # for each open brace: the inline module it opens, or None
    pending_path = None  # a #[path = "..."] attribute before `mod x;`
    i = 0
    while i < len(toks):
        tok, line = toks[i]
        if tok == "#" and i + 1 < len(toks) and toks[i + 1][0] in "[!":
            # Attribute: read #[path = "..."] from the text, skip the rest.
            j = i + 2 if toks[i + 1][0] == "[" else i + 3
            depth, k = 1, j
            while k < len(toks) and depth:
                depth += {"[": 1, "]": -1}.get(toks[k][0], 0)
                k += 1
            if j < len(toks) and toks[j][0] == "path":
                pending_path = attribute_path(text, toks[i][1])
            i = k
            continue
        if tok == "{":
            braces.append(None)
        elif tok == "}":
            if braces and braces.pop() is not None:
                scope.pop()
        elif tok == "mod" and i + 2 < len(toks) and is_ident(toks[i + 1][0]):
            name, after = toks[i + 1][0], toks[i + 2][0]
            if after == ";":
                f.children.append((name, pending_path, scope[-1], False))
                pending_path = None
                i += 3
                continue
            if after == "{":
                f.children.append((name, None, scope[-1], True))
                scope.append(scope[-1] + (name,))
                braces.append(name)
                pending_path = None
                i += 3
                continue
        elif tok == "use" and (i == 0 or toks[i - 1][0] != "::"):
            trees = []
            j = i + 1
            if j < len(toks) and toks[j][0] == "::":
                j += 1  # `use ::extern_crate::...`: never a module of ours
                k = j
                while k < len(toks) and toks[k][0] != ";":
                    k += 1
                i = k + 1
                continue
            j = parse_use_tree(toks, j, [], trees)
            for segs, alias in trees:
                f.uses.append((scope[-1], segs, alias, line))
            i = j
            continue
        elif is_ident(tok) and i + 1 < len(toks) and toks[i + 1][0] == "::":
            prev = toks[i - 1][0] if i else ""
            if prev not in ("::", ".") and tok != "Self":
                segs = [tok]
                j = i + 1
                while j + 1 < len(toks) and toks[j][0] == "::" and is_ident(toks[j + 1][0]):
                    segs.append(toks[j + 1][0])
                    j += 2
                f.paths.append((scope[-1], segs, line))
                i = j
                continue
        if tok in (";", "{", "}"):
            pending_path = None
        i += 1


def attribute_path(text, line):
    m = re.search(r'#\[\s*path\s*=\s*"([^"]*)"', text.splitlines()[line - 1])
    return m.group(1) if m else None


# ---------------------------------------------------------------- crates


class Crate:
    def __init__(self, name, root_file):
        self.name = name
        self.root_file = root_file
        self.files = {}  # module path -> File
        self.modules = {}  # module path (incl. inline) -> File holding it
        self.missing = []  # `mod x;` with no file found

    def load(self):
        self._load(self.root_file, (), os.path.dirname(self.root_file))

    def _load(self, path, module, child_dir):
        f = File(path, module)
        with open(path, encoding="utf-8") as fh:
            parse_file(f, fh.read())
        self.files[module] = f
        self.modules[module] = f
        for name, attr_path, scope, inline in f.children:
            sub = module + scope + (name,)
            if inline:
                self.modules[sub] = f
                continue
            # A child of an inline module lives in child_dir/<inline path>/.
            base = os.path.join(child_dir, *scope)
            if attr_path is not None:
                at = os.path.dirname(path) if scope == () else base
                candidates = [os.path.normpath(os.path.join(at, attr_path))]
            else:
                candidates = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            found = next((c for c in candidates if os.path.isfile(c)), None)
            if found is None:
                self.missing.append((path, name))
                continue
            stem = os.path.splitext(os.path.basename(found))[0]
            sub_dir = os.path.dirname(found) if stem == "mod" else os.path.join(os.path.dirname(found), stem)
            self._load(found, sub, sub_dir)

    # -------------------------------------------------------- resolution

    def resolve(self, scope, segs, seen=None):
        """The module a path written in module `scope` refers to, or None
        when it leaves the crate (extern crates, std, locals)."""
        first = segs[0]
        if first == "crate":
            cur, rest = (), segs[1:]
        elif first in ("super", "self"):
            cur, rest = scope, segs
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    if not cur:
                        return None
                    cur = cur[:-1]
                rest = rest[1:]
        elif scope + (first,) in self.modules:
            cur, rest = scope + (first,), segs[1:]
        else:
            alias = self.alias(scope, first, seen or set())
            if alias is None:
                return None
            cur, rest = alias, segs[1:]
        while rest and cur + (rest[0],) in self.modules:
            cur, rest = cur + (rest[0],), rest[1:]
        if rest and rest[0] not in ("*", "self"):
            via = self.reexport(cur, rest[0], seen or set())
            if via is not None:
                return via
        return cur

    def alias(self, scope, name, seen):
        """A module brought into scope (or an enclosing inline scope of the
        same file) by a `use`."""
        f = self.modules.get(scope)
        if f is None or ("alias", scope, name) in seen:
            return None
        seen = seen | {("alias", scope, name)}
        s = scope
        while True:
            for use_scope, segs, alias, _ in f.uses:
                if use_scope == s[len(f.module):] and imported_name(segs, alias) == name:
                    if segs[-1] == "self":
                        segs = segs[:-1]
                    target = self.resolve(s, segs, seen) if segs else None
                    if target is not None and target[-1:] == (segs[-1],):
                        return target
            if len(s) <= len(f.module):
                return None
            s = s[:-1]

    def reexport(self, module, item, seen):
        """Where `item`, imported into `module` by a `use`, comes from."""
        key = (module, item)
        if key in seen:
            return None
        seen = seen | {key}
        f = self.modules.get(module)
        if f is None:
            return None
        for use_scope, segs, alias, _ in f.uses:
            if module[len(f.module):] != use_scope:
                continue
            if imported_name(segs, alias) == item:
                return self.resolve(module, segs, seen)
        return None

    def edges(self):
        """{(from file module, to file module): [(line, path text), ...]}"""
        out = {}
        for module, f in self.files.items():
            refs = [(s, segs, line, "use ") for s, segs, _, line in f.uses]
            refs += [(s, segs, line, "") for s, segs, line in f.paths]
            for scope, segs, line, kind in refs:
                target = self.resolve(module + scope, segs)
                if target is None:
                    continue
                to = self.modules[target].module
                if to != module:
                    shown = segs[:-1] if segs[-1] == "self" else segs
                    out.setdefault((module, to), []).append((line, kind + "::".join(shown)))
        return out

    def label(self, module):
        return self.files[module].path


def imported_name(segs, alias):
    """The name a use tree brings into scope (None for a glob)."""
    if alias:
        return alias
    if segs[-1] == "*":
        return None
    if segs[-1] == "self":
        return segs[-2] if len(segs) > 1 else None
    return segs[-1]


def crate_roots(crate_dir):
    """(crate name, root file) of every crate target in a package."""
    roots = []
    src = os.path.join(crate_dir, "src")
    for name in ("lib.rs", "main.rs"):
        if os.path.isfile(os.path.join(src, name)):
            roots.append((name[:-3], os.path.join(src, name)))
    for sub in ("src/bin", "tests", "benches", "examples"):
        d = os.path.join(crate_dir, sub)
        if os.path.isdir(d):
            for e in sorted(os.listdir(d)):
                p = os.path.join(d, e)
                if e.endswith(".rs") and os.path.isfile(p):
                    roots.append((sub + "/" + e, p))
                elif os.path.isfile(os.path.join(p, "main.rs")):
                    roots.append((sub + "/" + e, os.path.join(p, "main.rs")))
    return roots


def workspace_members(root):
    with open(os.path.join(root, "Cargo.toml"), encoding="utf-8") as fh:
        text = fh.read()
    m = re.search(r"^members\s*=\s*\[(.*?)\]", text, re.S | re.M)
    if not m:
        return ["."]
    return re.findall(r'"([^"]+)"', m.group(1))


# ---------------------------------------------------------------- cycles


def cycles(nodes, edges, limit=200):
    """Every elementary cycle (Johnson's algorithm), at most `limit`."""
    adj = {n: sorted({b for (a, b) in edges if a == n}) for n in nodes}
    order = sorted(nodes)
    found = []
    for idx, start in enumerate(order):
        allowed = set(order[idx:])
        blocked, bmap, stack = set(), {}, [start]

        def unblock(n):
            todo = [n]
            while todo:
                x = todo.pop()
                if x in blocked:
                    blocked.discard(x)
                    todo.extend(bmap.pop(x, ()))

        def circuit(v):
            closed = False
            blocked.add(v)
            for w in adj[v]:
                if w not in allowed or len(found) >= limit:
                    continue
                if w == start:
                    found.append(list(stack))
                    closed = True
                elif w not in blocked:
                    stack.append(w)
                    closed = circuit(w) or closed
                    stack.pop()
            if closed:
                unblock(v)
            else:
                for w in adj[v]:
                    if w in allowed:
                        bmap.setdefault(w, set()).add(v)
            return closed

        circuit(start)
        if len(found) >= limit:
            break
    return found


def check(crate_dirs, root, out=sys.stdout):
    """Checks the crates; returns (cycles found, crates, modules, edges)."""
    total_cycles = total_crates = total_modules = total_edges = 0
    for crate_dir in crate_dirs:
        for target, root_file in crate_roots(crate_dir):
            crate = Crate(target, root_file)
            crate.load()
            edges = crate.edges()
            total_crates += 1
            total_modules += len(crate.files)
            total_edges += len(edges)
            rel = lambda m: os.path.relpath(crate.label(m), root)
            for path, name in crate.missing:
                print(f"warning: {os.path.relpath(path, root)}: no file for `mod {name};`", file=out)
            found = cycles(list(crate.files), edges)
            total_cycles += len(found)
            for cyc in found:
                print(f"cycle in {os.path.relpath(root_file, root)}: "
                      + " -> ".join(rel(m) for m in cyc + [cyc[0]]), file=out)
                for a, b in zip(cyc, cyc[1:] + cyc[:1]):
                    line, what = edges[(a, b)][0]
                    more = len(edges[(a, b)]) - 1
                    print(f"    {rel(a)}:{line}: {what}" + (f" (+{more} more)" if more else ""), file=out)
    return total_cycles, total_crates, total_modules, total_edges


# ---------------------------------------------------------------- self-test

SELF_TEST = {
    "looped": {
        "Cargo.toml": '[package]\nname = "looped"\n',
        "src/lib.rs": "mod a;\nmod b;\nmod store;\npub use a::A;\n",
        # a -> b through a nested group; b -> a through a code path.
        "src/a.rs": "use crate::{b::{B, C}, store::Thing};\npub struct A;\n",
        "src/b.rs": "pub struct B;\npub struct C;\npub fn f() { let _ = super::a::A; }\n",
        # A parent using its child, which uses the parent.
        "src/store/mod.rs": "mod memory;\npub struct Thing;\npub fn mk() { memory::Memory::new(); }\n",
        "src/store/memory.rs": "use super::Thing;\npub struct Memory;\n",
    },
    "clean": {
        "Cargo.toml": '[package]\nname = "clean"\n',
        # The parent declares its children and re-exports: no edge back.
        "src/lib.rs": "mod a;\nmod b;\nmod text;\npub use text::Text;\n",
        # Comments, doc comments and strings naming other modules are no edges;
        # `crate::Text` is the re-export of text::Text.
        "src/a.rs": "//! uses crate::b::B\n/// see crate::b\n/* crate::b::B /* nested */ */\n"
                    'use crate::Text;\npub const S: &str = "crate::b::B";\n'
                    "pub const R: &str = r#\"super::b \"quoted\"\"#;\npub fn f<'x>(_: &'x str) -> char { 'b' }\n",
        "src/b.rs": "use crate::{a::{f, S}, text::Text as T};\n"
                    "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        "src/text.rs": "pub struct Text;\n",
    },
}


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        for crate, files in SELF_TEST.items():
            for rel, body in files.items():
                p = os.path.join(tmp, crate, rel)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "w", encoding="utf-8") as fh:
                    fh.write(body)
        sink = open(os.devnull, "w")
        looped, _, _, _ = check([os.path.join(tmp, "looped")], tmp, sink)
        crate = Crate("lib", os.path.join(tmp, "looped/src/lib.rs"))
        crate.load()
        got = {tuple(sorted(c)) for c in cycles(list(crate.files), crate.edges())}
        want = {(("a",), ("b",)), (("store",), ("store", "memory"))}
        clean, _, _, _ = check([os.path.join(tmp, "clean")], tmp, sink)
        sink.close()
        crate = Crate("lib", os.path.join(tmp, "clean/src/lib.rs"))
        crate.load()
        clean_edges = set(crate.edges())
        want_edges = {((), ("text",)), (("a",), ("text",)), (("b",), ("a",)), (("b",), ("text",))}
        ok = looped == 2 and got == want and clean == 0 and clean_edges == want_edges
        print("self-test " + ("passed" if ok else
              f"FAILED: looped {looped} cycles {sorted(got)}, clean {clean} cycles, "
              f"edges {sorted(clean_edges)}"))
        return 0 if ok else 1


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    args = argv[1:]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args[:1] == ["--root"] and len(args) >= 2:
        root, args = os.path.abspath(args[1]), args[2:]
    if any(a.startswith("-") for a in args):
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        return 2
    dirs = [os.path.join(root, a) for a in args] or [os.path.join(root, m) for m in workspace_members(root)]
    found, crates, modules, edges = check(dirs, root)
    if found:
        print(f"{found} module cycle(s)")
        return 1
    print(f"no module cycles: {len(dirs)} packages, {crates} crates, {modules} modules, {edges} edges")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
