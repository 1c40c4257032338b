//! QUIC Initial protection (RFC 9001 section 5): key derivation, header protection and
//! AES-128-GCM, as `sensor/decode/quic.py` does with `cryptography`. The versions' salts
//! and labels stay in Python (`_SALTS`, `_LABELS`): a new version is one table row there.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

pub const SAMPLE_LEN: usize = 16;

pub struct Keys {
    aead: Aes128Gcm,
    hp: Aes128,
    iv: [u8; 12],
}

fn expand_label(hk: &Hkdf<Sha256>, label: &[u8], out: &mut [u8]) {
    // HKDF-Expand-Label with an empty context (RFC 8446 section 7.1)
    let mut info = Vec::with_capacity(4 + 6 + label.len());
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(0);
    // lengths here are at most 32 bytes: far below HKDF's 255 * 32 limit
    hk.expand(&info, out)
        .expect("HKDF output length within bounds");
}

/// The client Initial keys for a DCID under one version's salt and labels.
pub fn client_keys(salt: &[u8], dcid: &[u8], labels: [&[u8]; 3]) -> Keys {
    let initial = Hkdf::<Sha256>::new(Some(salt), dcid);
    let mut secret = [0u8; 32];
    expand_label(&initial, b"client in", &mut secret);
    let hk = Hkdf::<Sha256>::from_prk(&secret).expect("a 32-byte PRK");
    let (mut key, mut iv, mut hp) = ([0u8; 16], [0u8; 12], [0u8; 16]);
    expand_label(&hk, labels[0], &mut key);
    expand_label(&hk, labels[1], &mut iv);
    expand_label(&hk, labels[2], &mut hp);
    Keys {
        aead: Aes128Gcm::new(&key.into()),
        hp: Aes128::new(&hp.into()),
        iv,
    }
}

/// RFC 9000 appendix A.3: the full packet number nearest the expected one.
fn decode_pn(largest: i128, truncated: i128, nbits: u32) -> i128 {
    let expected = largest + 1;
    let win: i128 = 1 << nbits;
    let hwin = win / 2;
    let candidate = (expected & !(win - 1)) | truncated;
    if candidate <= expected - hwin && candidate < (1i128 << 62) - win {
        return candidate + win;
    }
    if candidate > expected + hwin && candidate >= win {
        return candidate - win;
    }
    candidate
}

pub enum Opened {
    TooShort,
    BadTag,
    Plain(i128, Vec<u8>),
}

/// Remove header protection and decrypt the Initial at `start..end` of `data` whose
/// packet number starts at `pn_offset` (the caller's header walk found them).
pub fn open(
    data: &[u8],
    start: usize,
    pn_offset: usize,
    end: usize,
    keys: &Keys,
    largest: i128,
) -> Opened {
    if end < pn_offset + 4 + SAMPLE_LEN || end > data.len() || start >= pn_offset {
        return Opened::TooShort;
    }
    let mut mask = [0u8; 16];
    mask.copy_from_slice(&data[pn_offset + 4..pn_offset + 4 + SAMPLE_LEN]);
    let mut block = mask.into();
    keys.hp.encrypt_block(&mut block);
    let mask: [u8; 16] = block.into();
    let first = data[start] ^ (mask[0] & 0x0F);
    let pn_len = (first & 0x03) as usize + 1;
    let mut header = Vec::with_capacity(pn_offset - start + pn_len);
    header.push(first);
    header.extend_from_slice(&data[start + 1..pn_offset]);
    let mut truncated: i128 = 0;
    for i in 0..pn_len {
        let b = data[pn_offset + i] ^ mask[1 + i];
        header.push(b);
        truncated = (truncated << 8) | b as i128;
    }
    let pn = decode_pn(largest, truncated, 8 * pn_len as u32);
    let mut nonce = keys.iv;
    let pn_bytes = (pn as u128).to_be_bytes(); // pn < 2**64 here: it fits the low 8 bytes
    for i in 0..12 {
        nonce[i] ^= pn_bytes[4 + i];
    }
    let payload = Payload {
        msg: &data[pn_offset + pn_len..end],
        aad: &header,
    };
    match keys.aead.decrypt(Nonce::from_slice(&nonce), payload) {
        Ok(plain) => Opened::Plain(pn, plain),
        Err(_) => Opened::BadTag,
    }
}
