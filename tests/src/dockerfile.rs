//! Dockerfiles read as the tests need them: stages, instructions, and the
//! forms of COPY, LABEL and ENTRYPOINT/CMD (the build itself is
//! scripts/image.py's).

use std::collections::BTreeMap;

/// One Dockerfile instruction: keyword (upper case) and the rest.
#[derive(Debug, Clone)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

/// One build stage: its base, its `AS` name, its instructions.
#[derive(Debug, Default)]
pub struct Stage {
    pub from: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// The stages of a Dockerfile (continuations joined, comments dropped);
/// panics on what it cannot read.
pub fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "dangling line continuation");
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical {
        let (kw, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = Instruction {
            keyword: kw.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                other => panic!("unexpected FROM {other:?}"),
            };
            stages.push(Stage {
                from: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("instruction before FROM")
                .instructions
                .push(ins);
        }
    }
    stages
}

impl Stage {
    /// Its `keyword` instructions, in order.
    pub fn all(&self, keyword: &str) -> Vec<&Instruction> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }
}

/// A COPY's `--from`, sources and destination.
pub fn copy_parts(ins: &Instruction) -> (Option<String>, Vec<String>, String) {
    let mut from = None;
    let mut words = Vec::new();
    for w in ins.args.split_whitespace() {
        if let Some(f) = w.strip_prefix("--from=") {
            from = Some(f.to_string());
        } else if !w.starts_with("--") {
            words.push(w.to_string());
        }
    }
    let dest = words.pop().expect("COPY destination");
    (from, words, dest)
}

/// `key="value" key2=value2` pairs of a LABEL.
pub fn label_pairs(args: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        assert_eq!(chars.next(), Some('='), "LABEL {args}");
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let v = std::iter::from_fn(|| chars.next_if(|c| *c != '"')).collect();
            assert_eq!(
                chars.next(),
                Some('"'),
                "unterminated quote in LABEL {args}"
            );
            v
        } else {
            std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect()
        };
        out.insert(key.trim().to_string(), value);
    }
}

/// The exec form `["a", "b"]` of ENTRYPOINT/CMD.
pub fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form JSON: {args}: {e}"))
}
