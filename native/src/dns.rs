//! DNS messages: `sensor/decode/dns.py`, the reference, ported line by line.

use std::collections::HashMap;
use std::fmt::Write;

pub type Res<T> = Result<T, &'static str>;

pub const MAX_CHAIN: usize = 16;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const ESCAPED: &[u8] = b"\"().;\\@$";
const COMMON_QTYPES: [u16; 12] = [1, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 255];

pub struct DnsSighting {
    pub answer: bool, // dns_answer, else dns_query
    pub name: String,
    pub chain: Vec<String>,
    pub answers: Vec<String>,
    pub ttl: u32,
}

fn u16_at(b: &[u8], pos: usize) -> u16 {
    u16::from_be_bytes([b[pos], b[pos + 1]])
}

fn push_byte_text(out: &mut String, b: u8) {
    if ESCAPED.contains(&b) {
        out.push('\\');
        out.push(b as char);
    } else if 0x20 < b && b < 0x7f {
        out.push(b as char);
    } else {
        let _ = write!(out, "\\{b:03}");
    }
}

/// `_name`: (the name's text, where the record goes on after it).
pub fn name_at(msg: &[u8], mut pos: usize) -> Res<(String, usize)> {
    let mut labels: Vec<&[u8]> = Vec::new();
    let mut after: Option<usize> = None;
    let size = msg.len();
    let mut ended = false;
    for _ in 0..128 {
        if pos >= size {
            return Err("dns name runs past the message");
        }
        let length = msg[pos] as usize;
        if length == 0 {
            ended = true;
            break;
        }
        if length < 0x40 {
            let end = pos + 1 + length;
            if end > size {
                return Err("dns label runs past the message");
            }
            labels.push(&msg[pos + 1..end]);
            pos = end;
        } else if length >= 0xC0 {
            if pos + 1 >= size {
                return Err("dns compression pointer cut short");
            }
            if after.is_none() {
                after = Some(pos + 2);
            }
            pos = ((length & 0x3F) << 8) | msg[pos + 1] as usize;
        } else {
            return Err("dns label type is not supported");
        }
    }
    if !ended {
        return Err("dns name compression pointers loop");
    }
    let raw: usize = labels.iter().map(|l| l.len()).sum();
    if raw + labels.len() > 255 {
        return Err("dns name longer than 255 bytes");
    }
    let mut text = String::with_capacity(raw + labels.len());
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        for &b in label.iter() {
            push_byte_text(&mut text, b);
        }
    }
    Ok((text, after.unwrap_or(pos + 1)))
}

/// `_host`: the normalised host name of a name's text (ASCII), or None.
pub fn host(text: &str) -> Option<String> {
    let t = if !text.is_empty() && text.len() <= 253 && !text.ends_with('.') {
        text
    } else {
        let t = text.trim_end_matches('.');
        if t.is_empty() || t.len() > 253 {
            return None;
        }
        t
    };
    Some(t.to_ascii_lowercase())
}

pub fn read_name(msg: &[u8], pos: usize) -> Res<String> {
    host(&name_at(msg, pos)?.0).ok_or("dns question name is not a host name")
}

#[derive(Default)]
struct Answers {
    cnames: HashMap<String, String>,
    addrs: HashMap<String, (Vec<String>, u32)>, // addresses, smallest TTL
}

pub fn decode_dns(payload: &[u8]) -> Res<Vec<DnsSighting>> {
    if payload.len() < 12 {
        return Err("dns message shorter than its header");
    }
    let qdcount = u16_at(payload, 4);
    let ancount = u16_at(payload, 6);
    let response = payload[2] & 0x80 != 0;
    let mut questions: Vec<String> = Vec::new();
    let mut p = 12usize;
    let mut broken = false;
    for _ in 0..qdcount {
        match name_at(payload, p) {
            Ok((text, next)) => {
                p = next + 4;
                if p > payload.len() {
                    broken = true; // "dns question cut short"
                    break;
                }
                questions.push(text);
            }
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    if broken {
        if questions.is_empty() {
            questions = vec![name_at(payload, 12)?.0];
        }
        questions.truncate(1);
    }
    let pos = if broken { None } else { Some(p) };
    let mut names = Vec::with_capacity(questions.len());
    for q in &questions {
        names.push(host(q).ok_or("dns question name is not a host name")?);
    }
    if !response {
        return Ok(names.into_iter().map(|n| query(n, false)).collect());
    }
    let answers = pos.and_then(|p| answers(payload, p, ancount).ok());
    let Some(a) = answers else {
        return Ok(names.into_iter().take(1).map(|n| query(n, true)).collect());
    };
    Ok(names.into_iter().map(|q| answer_sighting(q, &a)).collect())
}

fn query(name: String, answer: bool) -> DnsSighting {
    DnsSighting {
        answer,
        name,
        chain: Vec::new(),
        answers: Vec::new(),
        ttl: 0,
    }
}

fn answers(msg: &[u8], mut pos: usize, count: u16) -> Res<Answers> {
    let mut out = Answers::default();
    let size = msg.len();
    for _ in 0..count {
        let (raw_owner, next) = name_at(msg, pos)?;
        pos = next;
        if pos + 10 > size {
            return Err("dns record cut short");
        }
        let rtype = u16_at(msg, pos);
        let rclass = u16_at(msg, pos + 2);
        let ttl = u32::from_be_bytes([msg[pos + 4], msg[pos + 5], msg[pos + 6], msg[pos + 7]]);
        let rdlen = u16_at(msg, pos + 8) as usize;
        pos += 10;
        let rdata_end = pos + rdlen;
        if rdata_end > size {
            return Err("dns record data cut short");
        }
        let internet = rclass & 0x7FFF == CLASS_IN;
        if internet && (rtype == TYPE_A || rtype == TYPE_AAAA) {
            let want = if rtype == TYPE_A { 4 } else { 16 };
            if rdlen != want {
                return Err("dns address record of unexpected size");
            }
            if let Some(owner) = host(&raw_owner) {
                let text = if want == 4 {
                    ntop4(&msg[pos..rdata_end])
                } else {
                    ntop6(&msg[pos..rdata_end])
                };
                let e = out.addrs.entry(owner).or_insert_with(|| (Vec::new(), ttl));
                e.0.push(text);
                e.1 = e.1.min(ttl);
            }
        } else if internet && rtype == TYPE_CNAME {
            let owner = host(&raw_owner);
            let target = host(&name_at(msg, pos)?.0);
            if let (Some(o), Some(t)) = (owner, target) {
                out.cnames.entry(o).or_insert(t);
            }
        }
        pos = rdata_end;
    }
    Ok(out)
}

fn answer_sighting(qname: String, a: &Answers) -> DnsSighting {
    let mut chain: Vec<String> = Vec::new();
    let mut cur: &str = &qname;
    while chain.len() < MAX_CHAIN {
        let Some(next) = a.cnames.get(cur) else { break };
        cur = next;
        if next == &qname || chain.iter().any(|c| c == next) {
            break; // a loop: the walk stops on the name seen again (as the reference does)
        }
        chain.push(next.clone());
    }
    let (answers, ttl) = match a.addrs.get(cur) {
        Some((v, t)) => (v.clone(), *t),
        None => (Vec::new(), 0),
    };
    DnsSighting {
        answer: true,
        name: qname.clone(),
        chain,
        answers,
        ttl,
    }
}

pub fn ntop4(b: &[u8]) -> String {
    format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
}

/// glibc's `inet_ntop(AF_INET6)` (what Python's `socket.inet_ntop` prints).
pub fn ntop6(b: &[u8]) -> String {
    let words: Vec<u16> = (0..8).map(|i| u16_at(b, 2 * i)).collect();
    let (mut best_base, mut best_len): (isize, usize) = (-1, 0);
    let (mut cur_base, mut cur_len): (isize, usize) = (-1, 0);
    for (i, &w) in words.iter().enumerate() {
        if w == 0 {
            if cur_base == -1 {
                cur_base = i as isize;
                cur_len = 1;
            } else {
                cur_len += 1;
            }
        } else if cur_base != -1 {
            if best_base == -1 || cur_len > best_len {
                best_base = cur_base;
                best_len = cur_len;
            }
            cur_base = -1;
        }
    }
    if cur_base != -1 && (best_base == -1 || cur_len > best_len) {
        best_base = cur_base;
        best_len = cur_len;
    }
    if best_base != -1 && best_len < 2 {
        best_base = -1;
    }
    let mut out = String::with_capacity(40);
    let in_best = |i: usize| {
        best_base != -1 && i as isize >= best_base && (i as isize) < best_base + best_len as isize
    };
    for i in 0..8 {
        if in_best(i) {
            if i as isize == best_base {
                out.push(':');
            }
            continue;
        }
        if i != 0 {
            out.push(':');
        }
        if i == 6 && best_base == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff)) {
            out.push_str(&ntop4(&b[12..16]));
            return out;
        }
        let _ = write!(out, "{:x}", words[i]);
    }
    if best_base != -1 && best_base as usize + best_len == 8 {
        out.push(':');
    }
    out
}

pub fn looks_like_dns(payload: &[u8]) -> bool {
    if payload.len() < 17 {
        return false;
    }
    let flags = u16_at(payload, 2);
    let counts = [
        u16_at(payload, 4),
        u16_at(payload, 6),
        u16_at(payload, 8),
        u16_at(payload, 10),
    ];
    let rest: u32 = counts[1..].iter().map(|&c| c as u32).sum();
    if (flags >> 11) & 0xF != 0 || counts[0] != 1 || rest > 64 || flags & 0x0040 != 0 {
        return false;
    }
    let mut pos = 12;
    while pos < payload.len() && payload[pos] != 0 && payload[pos] < 64 {
        pos += payload[pos] as usize + 1;
    }
    if pos + 5 > payload.len() || payload[pos] != 0 {
        return false;
    }
    let qtype = u16_at(payload, pos + 1);
    let qclass = u16_at(payload, pos + 3);
    if !COMMON_QTYPES.contains(&qtype) || !matches!(qclass & 0x7FFF, 1 | 255) {
        return false;
    }
    read_name(payload, 12).is_ok()
}
