//! Parsing a body into a payload type, turning serde errors into [`Invalid`]
//! with a JSON pointer to the field that did not fit.

use serde::Deserialize;
use serde_json::error::Category;
use serde_path_to_error::Segment;

use crate::invalid::{push_token, Invalid};

pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Invalid> {
    // Serde lets a struct be read from an array too: insist on an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => Invalid::field("", "the body must be a JSON object"),
                Err(e) => Invalid::not_json(format!("the body is not valid JSON: {e}")),
            },
        );
    }
    // Fast path: a good payload parses without tracking where the parser is
    // (that costs about a third of the parse); only a refused one is parsed
    // again to name the field at fault. Checking UTF-8 once over the whole
    // body, then parsing it as text, is a quarter cheaper than serde_json's
    // check string by string.
    if let Ok(Ok(value)) = std::str::from_utf8(body).map(serde_json::from_str) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let pointer = pointer_of(err.path());
        let inner = err.into_inner();
        match inner.classify() {
            // The body is an object (checked above): a data error at its
            // root is about its members, e.g. a repeated key.
            Category::Data => Invalid::field(pointer, inner.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                Invalid::not_json(format!("the body is not valid JSON: {inner}"))
            }
        }
    })?;
    de.end()
        .map_err(|e| Invalid::not_json(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    let mut p = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => push_token(&mut p, &index.to_string()),
            Segment::Map { key } => push_token(&mut p, key),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    p
}
