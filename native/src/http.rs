//! HTTP/1.x request heads: `sensor/decode/http.py`, the reference; its three regular
//! expressions are written out as the scans they amount to.

use crate::text::{host_name, observed_name, py_space_latin1, strip_ascii};

pub struct Request {
    pub kind: &'static str, // http_connect | http_host | http_request
    pub name: String,
    pub proxy_form: bool,
    pub not_host: bool, // a value host_name refuses, kept as an observation
    pub path: Option<String>,
    pub user_agent: Option<String>,
}

fn is_ws(c: u8) -> bool {
    // `\s` of a bytes pattern
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `_REQUEST_LINE.match`: `([A-Z][A-Z_-]{0,19}) (\S{1,8192}) HTTP/1\.[0-9]\r?\n` ->
/// (method, target, end of the match).
fn request_line(p: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    if !p.first()?.is_ascii_uppercase() {
        return None;
    }
    let mlen = p
        .iter()
        .take_while(|&&c| c.is_ascii_uppercase() || c == b'_' || c == b'-')
        .count();
    if mlen > 20 || p.get(mlen) != Some(&b' ') {
        return None;
    }
    let t0 = mlen + 1;
    let tlen = p[t0..].iter().take_while(|&&c| !is_ws(c)).count();
    if tlen == 0 || tlen > 8192 {
        return None;
    }
    let mut i = t0 + tlen;
    let rest = &p[i..];
    if rest.len() < 10 || &rest[..8] != b" HTTP/1." || !rest[8].is_ascii_digit() {
        return None;
    }
    i += 9;
    if p.get(i) == Some(&b'\r') {
        i += 1;
    }
    if p.get(i) != Some(&b'\n') {
        return None;
    }
    Some((&p[..mlen], &p[t0..t0 + tlen], i + 1))
}

fn lower_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_ascii_lowercase() == *y)
}

fn spaces(h: &[u8], mut i: usize) -> usize {
    while i < h.len() && (h[i] == b' ' || h[i] == b'\t') {
        i += 1;
    }
    i
}

fn line_end(h: &[u8], i: usize) -> usize {
    i + h[i..]
        .iter()
        .take_while(|&&c| c != b'\r' && c != b'\n')
        .count()
}

/// `\n` + `field` (any case) + `[ \t]*:[ \t]*` from `start`: each (after the colon, after
/// its spaces) in turn.
fn fields<'a>(
    h: &'a [u8],
    start: usize,
    field: &'a [u8],
) -> impl Iterator<Item = (usize, usize)> + 'a {
    (start.min(h.len())..h.len()).filter_map(move |p| {
        if h[p] != b'\n'
            || p + 1 + field.len() > h.len()
            || !lower_eq(&h[p + 1..p + 1 + field.len()], field)
        {
            return None;
        }
        let c = spaces(h, p + 1 + field.len());
        if h.get(c) != Some(&b':') {
            return None;
        }
        Some((c + 1, spaces(h, c + 1)))
    })
}

/// `_HOST.search(head, start).group(1)`
fn host_header(h: &[u8], start: usize) -> Option<&[u8]> {
    let (_, v) = fields(h, start, b"host").next()?;
    Some(&h[v..line_end(h, v)])
}

/// `_USER_AGENT.search(head, start).group(1)`: 1 to 512 characters; an empty value gives
/// back one space if it had one, else the search goes on.
fn agent_header(h: &[u8], start: usize) -> Option<&[u8]> {
    for (colon, v) in fields(h, start, b"user-agent") {
        let end = line_end(h, v);
        if end > v {
            return Some(&h[v..end.min(v + 512)]);
        }
        if v > colon {
            return Some(&h[v - 1..v]);
        }
    }
    None
}

fn strip_port(a: &str) -> &str {
    if let Some(rest) = a.strip_prefix('[') {
        return match a.find(']') {
            Some(i) => &a[1..i],
            None => rest,
        };
    }
    if a.matches(':').count() == 1 {
        return a.split(':').next().unwrap_or(a);
    }
    a
}

/// `_name`: (the host of an authority or Host value, whether it is a host name).
fn authority_name(authority: &[u8]) -> (Option<String>, bool) {
    let text = match std::str::from_utf8(authority) {
        Ok(t) if authority.is_ascii() => strip_ascii(t),
        _ => return (None, false),
    };
    let text = match text.rfind('@') {
        Some(i) => &text[i + 1..],
        None => text,
    };
    match host_name(strip_port(text)) {
        Some(name) => (Some(name), true),
        None => (observed_name(text), false),
    }
}

fn ascii_replace(b: &[u8]) -> String {
    b.iter()
        .map(|&c| if c < 0x80 { c as char } else { '\u{FFFD}' })
        .collect()
}

fn latin1_strip(b: &[u8]) -> String {
    let s = b.iter().position(|&c| !py_space_latin1(c));
    let Some(s) = s else { return String::new() };
    let e = b.iter().rposition(|&c| !py_space_latin1(c)).unwrap_or(s);
    b[s..=e].iter().map(|&c| c as char).collect()
}

pub fn decode_http_request(payload: &[u8]) -> Option<Request> {
    let (method, target, mend) = request_line(payload)?;
    if method == b"CONNECT" {
        let (name, is_host) = authority_name(target);
        return Some(Request {
            kind: "http_connect",
            name: name.filter(|n| !n.is_empty())?,
            proxy_form: false,
            not_host: !is_host,
            path: None,
            user_agent: None,
        });
    }
    let head = match payload.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &payload[..i + 2],
        None => payload,
    };
    let proxy_form = (target.len() >= 7 && lower_eq(&target[..7], b"http://"))
        || (target.len() >= 8 && lower_eq(&target[..8], b"https://"));
    let (authority, path): (&[u8], &[u8]) = if proxy_form {
        split_target(target)
    } else {
        (b"", target)
    };
    let (name, is_host) = match host_header(head, mend - 2) {
        Some(v) => authority_name(v),
        None if proxy_form => authority_name(authority),
        None => (None, true),
    };
    let path = Some(ascii_replace(path));
    let user_agent = agent_header(head, mend - 2).map(latin1_strip);
    Some(match name {
        None => Request {
            kind: "http_request",
            name: String::new(),
            proxy_form: false,
            not_host: false,
            path,
            user_agent,
        },
        Some(name) => Request {
            kind: "http_host",
            name,
            proxy_form,
            not_host: !is_host,
            path,
            user_agent,
        },
    })
}

/// `http://host:port/path?q` -> (b"host:port", b"/path?q")
fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let i = target
        .windows(2)
        .position(|w| w == b"//")
        .map_or(target.len(), |i| i + 2);
    let rest = &target[i..];
    match rest.iter().position(|&c| c == b'/') {
        Some(s) => (&rest[..s], &rest[s..]),
        None => (rest, b"/"),
    }
}
