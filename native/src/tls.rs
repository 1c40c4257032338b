//! TLS ClientHello: `sensor/decode/tls.py`, the reference, ported line by line
//! (Python's forgiving slices and its IndexError on a single index kept as they are).

use crate::text::{host_name, observed_name};

pub type Res<T> = Result<T, String>;

const EXT_SERVER_NAME: usize = 0;
const EXT_ECH: usize = 0xFE0D;
pub const MAX_HELLO: usize = 65536;
const CUT: &str = "tls client hello cut short";

/// `int.from_bytes(b[start:end], "big")` with Python's slice bounds.
fn be(b: &[u8], start: usize, end: usize) -> usize {
    let s = start.min(b.len());
    let e = end.min(b.len()).max(s);
    b[s..e]
        .iter()
        .fold(0usize, |acc, &x| (acc << 8) | x as usize)
}

fn slice(b: &[u8], start: usize, end: usize) -> &[u8] {
    let s = start.min(b.len());
    &b[s..end.min(b.len()).max(s)]
}

fn at(b: &[u8], pos: usize) -> Res<usize> {
    b.get(pos)
        .map(|&x| x as usize)
        .ok_or_else(|| CUT.to_string())
}

/// A ClientHello's server name: the name, ECH offered, and whether the name is not a host
/// name (an observation, never matched).
pub type Hello = (String, bool, bool);

/// The server name of a ClientHello body; None without a usable server_name.
pub fn parse_client_hello(hello: &[u8]) -> Res<Option<Hello>> {
    let mut pos = 2 + 32;
    pos += 1 + at(hello, pos)?;
    pos += 2 + be(hello, pos, pos + 2);
    pos += 1 + at(hello, pos)?;
    if pos + 2 > hello.len() {
        return Ok(None);
    }
    let ext_end = pos + 2 + be(hello, pos, pos + 2);
    pos += 2;
    let mut sni: Option<String> = None;
    let mut ech = false;
    while pos + 4 <= ext_end.min(hello.len()) {
        let etype = be(hello, pos, pos + 2);
        let elen = be(hello, pos + 2, pos + 4);
        let data = slice(hello, pos + 4, pos + 4 + elen);
        if data.len() < elen {
            return Err("tls extension cut short".into());
        }
        if etype == EXT_SERVER_NAME {
            sni = server_name(data)?;
        } else if etype == EXT_ECH {
            ech = true;
        }
        pos += 4 + elen;
    }
    let Some(sni) = sni else { return Ok(None) };
    if let Some(name) = host_name(&sni) {
        return Ok(Some((name, ech, false)));
    }
    Ok(observed_name(&sni).map(|name| (name, ech, true)))
}

/// The host_name entry of a server_name extension, as sent.
fn server_name(data: &[u8]) -> Res<Option<String>> {
    let mut pos = 2;
    while pos + 3 <= data.len() {
        let ntype = data[pos];
        let nlen = be(data, pos + 1, pos + 3);
        let raw = slice(data, pos + 3, pos + 3 + nlen);
        if ntype == 0 {
            if !raw.is_ascii() {
                return Err("tls server_name is not ASCII".into());
            }
            // ASCII: valid UTF-8
            return Ok(Some(String::from_utf8_lossy(raw).into_owned()));
        }
        pos += 3 + nlen;
    }
    Ok(None)
}

/// `hello_from_stream`: (complete, (server name, ECH)).
pub fn hello_from_stream(buf: &[u8]) -> Res<(bool, Option<Hello>)> {
    let mut hs: Vec<u8> = Vec::new();
    let mut pos = 0;
    while pos + 5 <= buf.len() {
        if buf[pos] != 0x16 || buf[pos + 1] != 3 {
            return Err("tls stream: a non-handshake record before the hello ended".into());
        }
        let rec_len = be(buf, pos + 3, pos + 5);
        let frag = slice(buf, pos + 5, pos + 5 + rec_len);
        hs.extend_from_slice(frag);
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Ok((true, None));
            }
            let need = 4 + be(&hs, 1, 4);
            if need > MAX_HELLO {
                return Err(format!("tls client hello claims {need} bytes"));
            }
            if hs.len() >= need {
                return Ok((true, parse_client_hello(&hs[4..need])?));
            }
        }
        if frag.len() < rec_len {
            return Ok((false, None));
        }
        pos += 5 + rec_len;
    }
    Ok((false, None))
}
