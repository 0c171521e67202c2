//! What the knobs are, for people: `--help` and the markdown reference
//! table (`docs/reference.md`, between its `sidecar-knobs` markers), both
//! built from [`KNOBS`].

use super::knobs::{Knob, KNOBS};

/// Where `--help` wraps a knob's meaning.
const HELP_WIDTH: usize = 78;
const HELP_INDENT: &str = "      ";

/// `--help` text.
pub fn help() -> String {
    let mut s = String::from(
        "signalgate-sidecar: signals in, deduplicated RemediationRequests out.\n\n\
         Every setting is an environment variable SIGNALGATE_<NAME> or a flag --<name>:\n\n",
    );
    for k in KNOBS {
        let flag = k.flag();
        s.push_str(&format!(
            "  {flag:<24} {:<31} default {}\n",
            k.env(),
            default_text(k)
        ));
        // Plain text on a terminal: no markdown code spans or emphasis.
        let plain: String = k
            .meaning
            .chars()
            .filter(|c| !matches!(c, '`' | '*'))
            .collect();
        wrap_into(&mut s, &plain);
    }
    s
}

/// The reference table, `| Variable | Default | Meaning |`, one row per
/// knob (`make knobs` writes it into `docs/reference.md`).
pub fn markdown_table() -> String {
    let mut s = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for k in KNOBS {
        let default = if k.default.is_empty() {
            "unset".to_string()
        } else {
            format!("`{}`", k.default)
        };
        s.push_str(&format!("| `{}` | {default} | {} |\n", k.env(), k.meaning));
    }
    s
}

fn default_text(k: &Knob) -> &'static str {
    if k.default.is_empty() {
        "unset"
    } else {
        k.default
    }
}

/// Appends `text` in lines of at most [`HELP_WIDTH`] columns (a longer word
/// stands alone), each indented by [`HELP_INDENT`].
fn wrap_into(out: &mut String, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && HELP_INDENT.len() + line.len() + 1 + word.len() > HELP_WIDTH {
            out.push_str(HELP_INDENT);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(HELP_INDENT);
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_knob_with_its_flag_variable_and_default() {
        let help = help();
        for k in KNOBS {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{} ", k.flag())))
                .unwrap_or_else(|| panic!("no line for {}", k.flag()));
            assert!(line.contains(&k.env()), "{line}");
            assert!(
                line.ends_with(&format!("default {}", default_text(k))),
                "{line}"
            );
        }
        let meaning_lines = help.lines().filter(|l| l.starts_with(HELP_INDENT));
        for l in meaning_lines {
            let one_word = !l.trim().contains(' ');
            assert!(l.chars().count() <= HELP_WIDTH || one_word, "{l}");
        }
    }

    #[test]
    fn docs_reference_holds_the_table_of_these_knobs() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- sidecar-knobs:begin -->", "<!-- sidecar-knobs:end -->");
        let block = doc
            .split_once(begin)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(block, _)| block)
            .unwrap_or_else(|| panic!("docs/reference.md has no {begin} … {end} block"));
        assert!(
            block.trim() == markdown_table().trim(),
            "docs/reference.md's sidecar knob table differs from sidecar/src/config/knobs.rs: \
             run `make knobs` and commit the result"
        );
    }

    #[test]
    fn the_table_has_one_row_per_knob() {
        let table = markdown_table();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), KNOBS.len());
        assert_eq!(rows[0].split(" | ").nth(1), Some("`127.0.0.1:8081`"));
        assert!(
            table.contains("| `SIGNALGATE_REDIS_URL` | unset | "),
            "{table}"
        );
    }
}
