//! A local answer: the refusal the filter sends instead of forwarding, as
//! an `application/problem+json` body with its headers.

use signalgate_model::problem::{Problem, CONTENT_TYPE};

use crate::outcome::Outcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    pub status: u16,
    /// Extra headers besides `content-type`.
    pub headers: Vec<(&'static str, String)>,
    /// The `application/problem+json` body.
    pub body: String,
    /// Why, for the debug log.
    pub reason: String,
}

impl Reply {
    /// The reply carrying `problem`; `reason` is what the debug log says.
    pub fn new(outcome: Outcome, problem: Problem, reason: String) -> Reply {
        Reply {
            outcome,
            status: problem.status,
            headers: Vec::new(),
            body: problem.to_json(),
            reason,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// All response headers, `content-type` first.
    pub fn all_headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![("content-type", CONTENT_TYPE)];
        h.extend(self.headers.iter().map(|(n, v)| (*n, v.as_str())));
        h
    }
}

/// `s` cut to 200 bytes (on a character boundary) for a reply's detail.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(shorten("short"), "short");
        let cut = shorten(&"é".repeat(150));
        assert_eq!(cut, format!("{}…", "é".repeat(100)));
        let cut = shorten(&format!("a{}", "é".repeat(150)));
        assert_eq!(cut, format!("a{}…", "é".repeat(99)));
    }
}
