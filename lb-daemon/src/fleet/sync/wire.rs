//! What travels between two hosts' flow sync, and how it is authenticated.
//!
//! One TCP connection per (sender, receiver) pair carries frames:
//! `len: u32 BE | kind: u8 | seq: u64 BE | payload | tag: 16 bytes`, `len` counting everything
//! after itself. The connection opens with a HELLO each way: the sender's carries its nonce,
//! the receiver's its own nonce and a tag over both, proving it holds the fleet's key now (not
//! replayed). Every later frame is tagged with HMAC-SHA256 (truncated to 128 bits) under a
//! session key derived from the shared key and both nonces, over the direction, the sequence
//! number and the payload: a frame from another connection, replayed, reordered or altered is
//! refused and the connection closed.
//!
//! A flow record ([`WireFlow`]) names the backend by address and port, never by this host's
//! backend index (indexes are local: they depend on each host's history of reloads), and
//! carries the epoch the flow was pinned under; the receiver maps both to its own.

use hmac::{Hmac, Mac};
use lb_common::maps::{FAMILY_V4, FAMILY_V6, FlowKey};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

type HmacSha256 = Hmac<Sha256>;

/// Protocol magic and version, first bytes of every HELLO.
pub const MAGIC: &[u8; 8] = b"LBSYNC01";
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 16;
/// Bytes of a frame's tag.
pub const TAG_BYTES: usize = 16;
/// Frame header after `len`: kind (1) and seq (8).
pub const HEADER_BYTES: usize = 9;
/// Largest accepted frame (`len`): a batch of [`MAX_RECORDS_PER_FRAME`] IPv6 records fits.
pub const MAX_FRAME: usize = 1 << 20;
/// Most records in one FLOWS frame.
pub const MAX_RECORDS_PER_FRAME: usize = 8192;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Opens a connection (each way).
    Hello = 1,
    /// Flow records (live or part of a bulk transfer).
    Flows = 2,
    /// The bulk transfer is complete (payload: how many flows it carried, u64 BE).
    BulkDone = 3,
    /// Nothing to send this interval: proves the sender alive, asks for an ACK.
    Ping = 4,
    /// Receiver to sender: frames up to `seq` (payload, u64 BE) were processed.
    Ack = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Hello,
            2 => Self::Flows,
            3 => Self::BulkDone,
            4 => Self::Ping,
            5 => Self::Ack,
            _ => return None,
        })
    }
}

/// Why a frame or a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its fields.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Not a frame of this protocol.
    #[error("{0}")]
    Malformed(String),
    /// The tag does not verify: another key, or altered, replayed or reordered.
    #[error("authentication failed ({0})")]
    Auth(&'static str),
}

/// One flow as it travels: the client-side 5-tuple, the backend by address, the epoch, and the
/// entry's `FLOW_FIN` / `FLOW_RST` / `FLOW_ESTABLISHED` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFlow {
    /// The 5-tuple, as in `FLOWS` (addresses and ports in network byte order in memory).
    pub key: FlowKey,
    /// The backend.
    pub backend: SocketAddr,
    /// The service epoch the backend was chosen under (on the sending host).
    pub epoch: u32,
    /// State bits.
    pub flags: u8,
}

/// An address as the data plane stores it: four words holding the bytes in network order.
pub fn words_of(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            core::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
        }
    }
}

/// The address of data-plane words of `family`.
pub fn ip_of(family: u8, words: &[u32; 4]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

fn put_addr(out: &mut Vec<u8>, family: u8, words: &[u32; 4]) {
    let n = if family == FAMILY_V4 { 1 } else { 4 };
    for w in &words[..n] {
        out.extend_from_slice(&w.to_ne_bytes());
    }
}

impl WireFlow {
    /// Encoded size: 12 bytes, then three addresses of 4 (IPv4) or 16 (IPv6) bytes.
    pub fn encoded_len(&self) -> usize {
        12 + if self.key.family == FAMILY_V4 { 12 } else { 48 }
    }

    /// Appends the record: family, flags, client port, VIP port, backend port (network
    /// order), epoch (BE), then client, VIP and backend addresses.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.key.family);
        out.push(self.flags);
        out.extend_from_slice(&self.key.sport.to_ne_bytes());
        out.extend_from_slice(&self.key.dport.to_ne_bytes());
        out.extend_from_slice(&self.backend.port().to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        put_addr(out, self.key.family, &self.key.src);
        put_addr(out, self.key.family, &self.key.dst);
        put_addr(out, self.key.family, &words_of(self.backend.ip()));
    }

    /// Reads one record from the front of `buf`; returns it and the bytes it took.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), WireError> {
        let head = buf.get(..12).ok_or(WireError::Truncated("flow record"))?;
        let family = head[0];
        let a = match family {
            FAMILY_V4 => 4,
            FAMILY_V6 => 16,
            f => return Err(WireError::Malformed(format!("flow record of address family {f}"))),
        };
        let body = buf.get(12..12 + 3 * a).ok_or(WireError::Truncated("flow record"))?;
        let addr = |i: usize| {
            let mut w = [0u32; 4];
            for (j, word) in w.iter_mut().enumerate().take(a / 4) {
                let at = i * a + 4 * j;
                *word = u32::from_ne_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            }
            w
        };
        let key = FlowKey {
            src: addr(0),
            dst: addr(1),
            sport: u16::from_ne_bytes([head[2], head[3]]),
            dport: u16::from_ne_bytes([head[4], head[5]]),
            proto: lb_common::maps::PROTO_TCP,
            family,
            _pad: [0; 2],
        };
        let backend = SocketAddr::new(ip_of(family, &addr(2)), u16::from_be_bytes([head[6], head[7]]));
        let epoch = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        Ok((Self { key, backend, epoch, flags: head[1] }, 12 + 3 * a))
    }
}

/// Encodes a FLOWS payload: record count (u32 BE), then the records.
pub fn encode_flows(flows: &[WireFlow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + flows.iter().map(WireFlow::encoded_len).sum::<usize>());
    out.extend_from_slice(&(flows.len() as u32).to_be_bytes());
    for f in flows {
        f.encode(&mut out);
    }
    out
}

/// Decodes a FLOWS payload.
pub fn decode_flows(payload: &[u8]) -> Result<Vec<WireFlow>, WireError> {
    let n = payload.get(..4).ok_or(WireError::Truncated("flows frame"))?;
    let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
    if n > MAX_RECORDS_PER_FRAME {
        return Err(WireError::Malformed(format!("{n} records in one frame (most {MAX_RECORDS_PER_FRAME})")));
    }
    let mut at = 4;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (f, used) = WireFlow::decode(&payload[at..])?;
        out.push(f);
        at += used;
    }
    if at != payload.len() {
        return Err(WireError::Malformed("trailing bytes after the flow records".into()));
    }
    Ok(out)
}

/// A HELLO's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Fresh random bytes of this connection end.
    pub nonce: [u8; NONCE_BYTES],
    /// The sender's listen address (who it is, for the receiver's view).
    pub name: String,
}

impl Hello {
    /// A hello with a fresh nonce from the OS.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self { nonce, name: name.to_owned() })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    fn decode(payload: &[u8]) -> Result<Self, WireError> {
        if payload.len() < MAGIC.len() + NONCE_BYTES || &payload[..MAGIC.len()] != MAGIC {
            return Err(WireError::Malformed("not a flow-sync hello (another program or version)".into()));
        }
        let nonce = payload[MAGIC.len()..MAGIC.len() + NONCE_BYTES].try_into().expect("length checked");
        let name = String::from_utf8_lossy(&payload[MAGIC.len() + NONCE_BYTES..]).into_owned();
        Ok(Self { nonce, name })
    }
}

/// The fleet's shared key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// Wraps the key file's bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// The sender's HELLO frame.
    pub fn client_hello(&self, hello: &Hello) -> Vec<u8> {
        let payload = hello.encode();
        let tag = self.mac(&[b"hello-c", &payload]);
        frame_bytes(Kind::Hello, 0, &payload, &tag[..TAG_BYTES])
    }

    /// Checks the sender's HELLO (a frame read by [`read_frame`]).
    pub fn check_client_hello(&self, f: &RawFrame) -> Result<Hello, WireError> {
        if f.kind != Kind::Hello || f.seq != 0 {
            return Err(WireError::Malformed("the connection must open with a hello".into()));
        }
        let hello = Hello::decode(&f.payload)?;
        verify(&self.mac(&[b"hello-c", &f.payload]), &f.tag, "hello")?;
        Ok(hello)
    }

    /// The receiver's HELLO answering `client`: tagged over both nonces.
    pub fn server_hello(&self, client: &Hello, hello: &Hello) -> Vec<u8> {
        let payload = hello.encode();
        let tag = self.mac(&[b"hello-s", &client.nonce, &payload]);
        frame_bytes(Kind::Hello, 0, &payload, &tag[..TAG_BYTES])
    }

    /// Checks the receiver's HELLO answering `client`.
    pub fn check_server_hello(&self, client: &Hello, f: &RawFrame) -> Result<Hello, WireError> {
        if f.kind != Kind::Hello || f.seq != 0 {
            return Err(WireError::Malformed("expected the peer's hello".into()));
        }
        let hello = Hello::decode(&f.payload)?;
        verify(&self.mac(&[b"hello-s", &client.nonce, &f.payload]), &f.tag, "hello")?;
        Ok(hello)
    }

    /// The session of a connection opened by `client` and answered by `server`, as seen by the
    /// sender (`sender = true`) or the receiver.
    pub fn session(&self, client: &Hello, server: &Hello, sender: bool) -> Session {
        let key = self.mac(&[b"session", &client.nonce, &server.nonce]);
        Session { key, sender, next_out: 1, next_in: 1 }
    }
}

fn verify(expected: &[u8; 32], tag: &[u8], what: &'static str) -> Result<(), WireError> {
    // Constant time, so the tag cannot be guessed byte by byte.
    let diff = expected[..TAG_BYTES].iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
    if tag.len() != TAG_BYTES || diff != 0 {
        return Err(WireError::Auth(what));
    }
    Ok(())
}

/// One authenticated connection's keys and sequence numbers.
pub struct Session {
    key: [u8; 32],
    /// This end sends flows (else it receives them and sends ACKs).
    sender: bool,
    next_out: u64,
    next_in: u64,
}

impl Session {
    fn tag(&self, from_sender: bool, seq: u64, kind: Kind, payload: &[u8]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(if from_sender { b"s" } else { b"r" });
        m.update(&seq.to_be_bytes());
        m.update(&[kind as u8]);
        m.update(payload);
        m.finalize().into_bytes().into()
    }

    /// The next frame this end sends.
    pub fn seal(&mut self, kind: Kind, payload: &[u8]) -> Vec<u8> {
        let seq = self.next_out;
        self.next_out += 1;
        let tag = self.tag(self.sender, seq, kind, payload);
        frame_bytes(kind, seq, payload, &tag[..TAG_BYTES])
    }

    /// Checks the next frame from the other end: its tag and that it is the next in sequence.
    pub fn open(&mut self, f: &RawFrame) -> Result<(), WireError> {
        if f.seq != self.next_in {
            return Err(WireError::Auth("sequence"));
        }
        verify(&self.tag(!self.sender, f.seq, f.kind, &f.payload), &f.tag, "frame")?;
        self.next_in += 1;
        Ok(())
    }

    /// Sequence number of the last frame sent.
    pub fn last_sent(&self) -> u64 {
        self.next_out - 1
    }
}

/// A frame as read, not yet verified.
#[derive(Debug)]
pub struct RawFrame {
    /// Its kind.
    pub kind: Kind,
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its tag.
    pub tag: Vec<u8>,
}

fn frame_bytes(kind: Kind, seq: u64, payload: &[u8], tag: &[u8]) -> Vec<u8> {
    let len = HEADER_BYTES + payload.len() + TAG_BYTES;
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(tag);
    out
}

/// Parses a frame body (everything after `len`).
pub fn parse_frame(body: &[u8]) -> Result<RawFrame, WireError> {
    if body.len() < HEADER_BYTES + TAG_BYTES {
        return Err(WireError::Truncated("frame"));
    }
    let kind =
        Kind::from_u8(body[0]).ok_or_else(|| WireError::Malformed(format!("frame kind {}", body[0])))?;
    let seq = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let tag_at = body.len() - TAG_BYTES;
    Ok(RawFrame { kind, seq, payload: body[HEADER_BYTES..tag_at].to_vec(), tag: body[tag_at..].to_vec() })
}

/// Reads one frame from `r` (bounded by [`MAX_FRAME`]).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<RawFrame> {
    use tokio::io::AsyncReadExt;
    let len = r.read_u32().await? as usize;
    if !(HEADER_BYTES + TAG_BYTES..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    parse_frame(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// The u64 BE payload of ACK and BULK_DONE frames.
pub fn u64_payload(payload: &[u8]) -> Result<u64, WireError> {
    let b: [u8; 8] = payload.try_into().map_err(|_| WireError::Truncated("counter"))?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(v6: bool) -> WireFlow {
        let (c, v, b): (IpAddr, IpAddr, IpAddr) = if v6 {
            (
                "2001:db8::1".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
                "2001:db8:1::5".parse().unwrap(),
            )
        } else {
            ("198.51.100.7".parse().unwrap(), "192.0.2.10".parse().unwrap(), "10.0.1.5".parse().unwrap())
        };
        WireFlow {
            key: FlowKey {
                src: words_of(c),
                dst: words_of(v),
                sport: 40000u16.to_be(),
                dport: 80u16.to_be(),
                proto: 6,
                family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
                _pad: [0; 2],
            },
            backend: SocketAddr::new(b, 8080),
            epoch: 7,
            flags: 4,
        }
    }

    #[test]
    fn records_round_trip_and_ipv4_is_compact() {
        let flows = vec![flow(false), flow(true), flow(false)];
        let payload = encode_flows(&flows);
        assert_eq!(payload.len(), 4 + 24 + 60 + 24);
        assert_eq!(decode_flows(&payload).unwrap(), flows);
        assert_eq!(ip_of(FAMILY_V4, &flows[0].key.dst).to_string(), "192.0.2.10");
        assert_eq!(ip_of(FAMILY_V6, &flows[1].key.src).to_string(), "2001:db8::1");
        // Truncated, trailing or absurd payloads are refused.
        assert!(decode_flows(&payload[..payload.len() - 1]).is_err());
        let mut long = payload.clone();
        long.push(0);
        assert!(decode_flows(&long).is_err());
        assert!(decode_flows(&[0xff, 0xff, 0xff, 0xff]).is_err());
        let mut bad = payload;
        bad[4] = 9;
        assert!(matches!(decode_flows(&bad), Err(WireError::Malformed(_))));
    }

    fn body(bytes: &[u8]) -> RawFrame {
        parse_frame(&bytes[4..]).unwrap()
    }

    #[test]
    fn a_session_needs_the_key_and_refuses_replays_and_changes() {
        let key = Key::new(b"0123456789abcdef".to_vec());
        let c = Hello::new("10.0.0.1:7946").unwrap();
        let s = Hello::new("10.0.0.2:7946").unwrap();
        let hello = key.check_client_hello(&body(&key.client_hello(&c))).unwrap();
        assert_eq!(hello, c);
        let reply = key.check_server_hello(&c, &body(&key.server_hello(&c, &s))).unwrap();
        assert_eq!(reply, s);
        // Another key fails at the hello.
        let other = Key::new(b"fedcba9876543210".to_vec());
        assert_eq!(other.check_client_hello(&body(&key.client_hello(&c))), Err(WireError::Auth("hello")));
        // A server hello replayed to another connection (other client nonce) fails.
        let c2 = Hello::new("10.0.0.1:7946").unwrap();
        assert!(key.check_server_hello(&c2, &body(&key.server_hello(&c, &s))).is_err());

        let mut tx = key.session(&c, &s, true);
        let mut rx = key.session(&c, &s, false);
        let f1 = tx.seal(Kind::Flows, &encode_flows(&[flow(false)]));
        let f2 = tx.seal(Kind::Ping, &[]);
        rx.open(&body(&f1)).unwrap();
        // Replayed: refused.
        assert_eq!(rx.open(&body(&f1)), Err(WireError::Auth("sequence")));
        // Altered payload: refused.
        let mut bad = f2.clone();
        bad[14] ^= 1;
        assert!(rx.open(&body(&bad)).is_err());
        rx.open(&body(&f2)).unwrap();
        // The receiver's frames do not verify as the sender's.
        let ack = rx.seal(Kind::Ack, &1u64.to_be_bytes());
        tx.open(&body(&ack)).unwrap();
        let mut rx2 = key.session(&c, &s, false);
        let mut rx3 = key.session(&c, &s, false);
        let forged = rx2.seal(Kind::Flows, &encode_flows(&[]));
        assert_eq!(
            rx3.open(&body(&forged)),
            Err(WireError::Auth("frame")),
            "a receiver's frame is no sender's"
        );
    }
}
