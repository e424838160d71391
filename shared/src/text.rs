//! Visible text: the one escape applied to everything the pipeline shows to a person or a
//! subscriber (SNS messages, error messages returned to Lambda, log fields, tag values).
//!
//! Object keys, user metadata, tags, image names and AWS error messages are chosen by whoever
//! uploads or by a remote service. A raw control character (ESC starts a terminal escape
//! sequence; CR/LF forge a new log line) or a Unicode bidi control (U+202E RIGHT-TO-LEFT
//! OVERRIDE makes `evil\u{202e}war.raw` read as `evilwar.raw` reversed) must not reach a log
//! line or a notification verbatim, or the reader sees something other than what happened.
//! [`escape_controls`] replaces each such character by visible text naming its code point
//! (`\u{202e}`), and leaves every other character as it is: keys in ordinary scripts read
//! unchanged. The escape is idempotent (its output contains no character it escapes).
//!
//! What is used to address a resource (an object key passed to S3) is never escaped: only
//! what is shown is.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` is escaped by [`escape_controls`]:
/// - every Unicode `Cc` character: C0 (U+0000–U+001F, `\t` and `\n` included: every field the
///   pipeline writes is one line), DEL (U+007F) and C1 (U+0080–U+009F);
/// - the bidi controls of Unicode's UAX #9 (U+061C ARABIC LETTER MARK, U+200E/U+200F marks,
///   U+202A–U+202E embeddings and overrides, U+2066–U+2069 isolates);
/// - the invisible format characters U+200B–U+200D (zero-width space / non-joiner / joiner) and
///   U+FEFF (zero-width no-break space, BOM), which hide text boundaries;
/// - U+2028 / U+2029 (line and paragraph separators), which break a line like `\n` does.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// How an escaped character is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `\u{202e}` (Rust's and JavaScript's spelling): messages, errors, logs, EC2 tags.
    Code,
    /// `U+202E`: only letters, digits and `+`, for S3 object tags, whose values allow only
    /// letters, digits, spaces and `+ - = . _ : / @` (S3 User Guide, "Categorizing your
    /// storage using tags": tag restrictions; the same set is "allowed across services" in the
    /// EC2 User Guide, "Tag restrictions").
    Tag,
}

/// `text` with every [`is_hidden`] character written as `\u{…}` (lower-case hex, no padding);
/// borrowed when there is none. The one escape of the pipeline's output.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    escape_as(text, Style::Code)
}

/// [`escape_controls`] with a chosen [`Style`].
pub fn escape_as(text: &str, style: Style) -> Cow<'_, str> {
    if !text.chars().any(is_hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_hidden(c) {
            match style {
                Style::Code => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                Style::Tag => out.push_str(&format!("U+{:04X}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Displays a string escaped by [`escape_controls`], for log fields:
/// `info!(key = %Shown(&key), …)`.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_controls(self.0))
    }
}

/// Escapes every string of a JSON value in place, object keys included (nested arrays and
/// objects too): the SNS message body is built once through this.
pub fn escape_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Cow::Owned(e) = escape_controls(s) {
                *s = e;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.chars().any(is_hidden)) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(escape_controls(&k).into_owned(), v);
                }
            }
            map.values_mut().for_each(escape_json);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn controls_and_bidi_become_visible_and_the_rest_is_untouched() {
        assert!(matches!(escape_controls("web/disk.raw"), Cow::Borrowed(_)));
        assert!(matches!(
            escape_controls("ünïcödé 日本 עברית"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("a\u{1b}[31mb\u{202e}war.raw"),
            "a\\u{1b}[31mb\\u{202e}war.raw"
        );
        assert_eq!(escape_controls("l1\nl2\r\tx"), "l1\\u{a}l2\\u{d}\\u{9}x");
        assert_eq!(
            escape_controls("\u{7f}\u{85}\u{9f}"),
            "\\u{7f}\\u{85}\\u{9f}"
        );
        for c in [
            '\u{061C}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{2028}',
            '\u{2029}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}',
            '\u{2067}', '\u{2068}', '\u{2069}', '\u{FEFF}', '\u{0}', '\u{1f}',
        ] {
            let e = escape_controls(&c.to_string()).into_owned();
            assert_eq!(e, format!("\\u{{{:x}}}", c as u32));
            assert!(!e.chars().any(is_hidden), "{e}");
        }
        for c in [
            'a', ' ', '~', '\u{a0}', 'é', '\u{2010}', '\u{2070}', '\u{202F}',
        ] {
            assert!(!is_hidden(c), "{c:?}");
        }
    }

    #[test]
    fn the_escape_is_idempotent_and_the_tag_style_uses_only_tag_characters() {
        let once = escape_controls("k\u{1b}\u{202e}.raw").into_owned();
        assert_eq!(escape_controls(&once), once);
        let tag = escape_as("k\u{1b}\u{202e}.raw", Style::Tag);
        assert_eq!(tag, "kU+001BU+202E.raw");
        assert!(
            tag.chars()
                .all(|c| c.is_alphanumeric() || " +-=._:/@".contains(c))
        );
        assert_eq!(Shown("a\u{202e}b").to_string(), "a\\u{202e}b");
    }

    #[test]
    fn json_strings_and_keys_are_escaped_at_every_depth() {
        let mut v = json!({
            "a\u{202e}": ["x\u{1b}", {"n": 1, "deep": ["\u{200b}"]}],
            "ok": "plain",
        });
        escape_json(&mut v);
        assert_eq!(
            v,
            json!({
                "a\\u{202e}": ["x\\u{1b}", {"n": 1, "deep": ["\\u{200b}"]}],
                "ok": "plain",
            })
        );
        assert!(!v.to_string().chars().any(is_hidden));
    }
}
