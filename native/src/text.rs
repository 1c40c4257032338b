//! Name text rules shared by the decoders: Python's `str.strip()` whitespace and
//! `sensor.decode.host_name` (the pure-Python reference), byte for byte.

/// Python's `str.isspace()` for one ASCII character.
pub fn py_space_ascii(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | b' ')
}

/// Python's `str.isspace()` for one Latin-1 character.
pub fn py_space_latin1(c: u8) -> bool {
    py_space_ascii(c) || c == 0x85 || c == 0xa0
}

/// `s.strip()` for ASCII text.
pub fn strip_ascii(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && py_space_ascii(c as u8))
}

/// `sensor.decode.normalise_name` for ASCII text: strip, drop final dots, lower case;
/// None when empty or longer than 253.
pub fn normalise_ascii(raw: &str) -> Option<String> {
    let name = strip_ascii(raw).trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

fn host_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'*' | b'-')
}

/// `_HOST.fullmatch`: `[a-z0-9_*-]+(\.[a-z0-9_*-]+)*|[0-9a-f:.]+`
fn host_shape(name: &str) -> bool {
    let b = name.as_bytes();
    if b.iter()
        .all(|&c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b':' || c == b'.')
        && !b.is_empty()
    {
        return true;
    }
    name.split('.')
        .all(|label| !label.is_empty() && label.bytes().all(host_char))
}

/// `sensor.decode.observed_name` for ASCII text: a value `host_name` refuses, kept as an
/// observation -- lowercase, `[v6]`/`[v6]:port`/`host:port` without the port, no final
/// dots; None with a blank or control character, no letter or digit, or over 253.
pub fn observed_name(raw: &str) -> Option<String> {
    let lowered = strip_ascii(raw).to_ascii_lowercase();
    let mut text: &str = &lowered;
    if let Some(inner) = text.strip_prefix('[') {
        // `\[([^\]]*)\](?::[0-9]*)?`
        if let Some(close) = inner.find(']') {
            let after = &inner[close + 1..];
            let port_ok = after.is_empty()
                || after
                    .strip_prefix(':')
                    .is_some_and(|d| d.bytes().all(|c| c.is_ascii_digit()));
            if port_ok {
                text = &inner[..close];
            }
        }
    } else if let Some(colon) = text.find(':') {
        // `([^:\[\]]*):[0-9]*`
        let (host, port) = (&text[..colon], &text[colon + 1..]);
        if !host.contains(['[', ']']) && port.bytes().all(|c| c.is_ascii_digit()) {
            text = host;
        }
    }
    let text = text.trim_end_matches('.');
    if text.len() > 253 || !text.bytes().all(|c| (0x21..0x7f).contains(&c)) {
        return None;
    }
    if text
        .bytes()
        .any(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        Some(text.to_string())
    } else {
        None
    }
}

/// `sensor.decode.host_name` for ASCII text.
pub fn host_name(raw: &str) -> Option<String> {
    let name = normalise_ascii(raw)?;
    if host_shape(&name) {
        Some(name)
    } else {
        None
    }
}
