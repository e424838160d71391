//! S3 user metadata as its uploader wrote it: RFC 2047 encoded-words decoded.
//!
//! HTTP header values are US-ASCII, so S3 carries a user-metadata value (`x-amz-meta-*`) that
//! is not US-ASCII as RFC 2047 encoded-words: the value is decoded as RFC 2047 before it is stored, and
//! a stored value that is not US-ASCII is encoded as RFC 2047 when it is returned (S3 User
//! Guide, "Working with object metadata", user-defined metadata), e.g. `Überprüft` comes back
//! as `=?UTF-8?B?w5xiZXJwcsO8ZnQ=?=`. The SDKs do not decode it (botocore even refuses
//! non-ASCII metadata in a request, so uploaders encode it themselves). Read as it comes, such
//! a value would become an AMI description or a tag in its encoded form, or be refused for
//! characters its uploader never wrote.

use std::borrow::Cow;

/// `raw` decoded when it is made only of RFC 2047 encoded-words (`=?charset?B|Q?text?=`, in
/// UTF-8, US-ASCII or ISO-8859-1, separated by whitespace, which RFC 2047 section 6.2 drops
/// between adjacent encoded-words); any other value, or one whose words do not decode to text,
/// unchanged. Adjacent words of one charset are joined before they are read as text: an
/// encoder may split a character's bytes between two words.
pub fn decode(raw: &str) -> Cow<'_, str> {
    let mut runs: Vec<(Charset, Vec<u8>)> = Vec::new();
    for word in raw.split_ascii_whitespace() {
        let Some((charset, bytes)) = decode_word(word) else {
            return Cow::Borrowed(raw);
        };
        match runs.last_mut() {
            Some((last, run)) if *last == charset => run.extend(bytes),
            _ => runs.push((charset, bytes)),
        }
    }
    if runs.is_empty() {
        return Cow::Borrowed(raw);
    }
    let mut out = String::new();
    for (charset, bytes) in runs {
        match charset.text(bytes) {
            Some(text) => out.push_str(&text),
            None => return Cow::Borrowed(raw),
        }
    }
    Cow::Owned(out)
}

/// The charsets read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Utf8,
    Ascii,
    Latin1,
}

impl Charset {
    fn named(name: &str) -> Option<Self> {
        // RFC 2231's language suffix (`UTF-8*en`) names the language only.
        let name = name.split('*').next().unwrap_or(name);
        [
            ("UTF-8", Self::Utf8),
            ("US-ASCII", Self::Ascii),
            ("ISO-8859-1", Self::Latin1),
        ]
        .into_iter()
        .find_map(|(n, c)| name.eq_ignore_ascii_case(n).then_some(c))
    }

    fn text(self, bytes: Vec<u8>) -> Option<String> {
        match self {
            Self::Utf8 => String::from_utf8(bytes).ok(),
            Self::Ascii => bytes
                .is_ascii()
                .then(|| bytes.iter().map(|&b| char::from(b)).collect()),
            Self::Latin1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        }
    }
}

/// One encoded-word (`=?charset?encoding?encoded-text?=`, RFC 2047 section 2): its charset
/// and bytes, or `None`.
fn decode_word(word: &str) -> Option<(Charset, Vec<u8>)> {
    let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut parts = inner.splitn(3, '?');
    let (charset, encoding, text) = (parts.next()?, parts.next()?, parts.next()?);
    let charset = Charset::named(charset)?;
    if text.contains('?') {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => aws_smithy_types::base64::decode(text).ok()?,
        "Q" | "q" => decode_q(text)?,
        _ => return None,
    };
    Some((charset, bytes))
}

/// The "Q" encoding (RFC 2047 section 4.2): `_` is a space, `=XX` a byte in hex.
fn decode_q(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            _ => out.push(b),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_words_are_decoded_and_anything_else_is_kept() {
        // As S3 returns them: one B-encoded UTF-8 word.
        assert_eq!(decode("=?UTF-8?B?w5xiZXJwcsO8ZnQ=?="), "Überprüft");
        assert_eq!(decode("=?utf-8?b?w5xiZXJwcsO8ZnQ=?="), "Überprüft");
        // Adjacent words: the whitespace between them is not part of the text.
        assert_eq!(
            decode("=?UTF-8?B?w5xiZXI=?= =?UTF-8?Q?pr=C3=BCft_heute?="),
            "Überprüft heute"
        );
        assert_eq!(decode("=?ISO-8859-1?Q?fran=E7ais?="), "français");
        assert_eq!(decode("=?UTF-8*de?B?w5xiZXI=?="), "Über");
        // A character's bytes split between two words ("Ü" is C3 9C).
        assert_eq!(decode("=?UTF-8?Q?=C3?= =?UTF-8?Q?=9Cber?="), "Über");
        // Plain values, and values that only look encoded, stay as they are.
        for raw in [
            "web-server",
            "",
            "  ",
            "a =?UTF-8?B?w5xiZXI=?=",
            "=?UTF-8?B?not base64!?=",
            "=?UTF-8?X?abc?=",
            "=?KOI8-R?B?w5xiZXI=?=",
            "=?UTF-8?B?/w==?=",
            "=?US-ASCII?B?w5xiZXI=?=",
            "=?UTF-8?Q?=ZZ?=",
            "=?UTF-8?B?",
        ] {
            assert_eq!(decode(raw), raw, "{raw:?}");
        }
    }
}
