//! The few rtnetlink requests the neighbour keeper needs, over a plain `NETLINK_ROUTE` socket:
//! which next hop the kernel would use for an address, and reading, adding and deleting
//! neighbour entries. Message building and parsing are pure functions with unit tests.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_VIA: u16 = 18;
const RTN_UNICAST: u8 = 1;
const NDA_DST: u16 = 1;
const NDA_PROTOCOL: u16 = 12;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Neighbour states in which the kernel has a usable link-layer address (`NUD_VALID`).
pub const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
/// Entries an operator set by hand (`NUD_PERMANENT`, `NUD_NOARP`): never touched.
pub const NUD_STATIC: u16 = 0x40 | 0x80;

/// The neighbour the kernel sends to on the way to an address: the gateway of the route, or
/// the address itself when it is on a connected network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    /// Outgoing interface.
    pub ifindex: u32,
    /// Address of the neighbour on that interface.
    pub addr: IpAddr,
}

/// A neighbour entry as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// `NUD_*` state bits.
    pub state: u16,
    /// Whether the kernel keeps it resolved by itself (`NTF_EXT_MANAGED`).
    pub managed: bool,
    /// The `proto` it was created with (0 when none).
    pub protocol: u8,
}

/// What a route lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A unicast route through a neighbour.
    Via(NextHop),
    /// Anything else (local address, blackhole, unreachable...): no neighbour to keep.
    NotUnicast(u8),
}

/// An rtnetlink socket bound in the network namespace of the thread that opened it.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket.
    pub fn open() -> io::Result<Self> {
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Requests are answered at once; never let a lost reply hang the caller.
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// The next hop of the kernel's route to `addr`.
    pub fn route_to(&mut self, addr: IpAddr) -> io::Result<Route> {
        let seq = self.next_seq();
        let reply = self.request(&route_request(seq, addr), seq)?;
        parse_route(&reply).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed route reply"))
    }

    /// The neighbour entry of `hop`, if there is one.
    pub fn neighbour(&mut self, hop: &NextHop) -> io::Result<Option<Neighbour>> {
        let seq = self.next_seq();
        match self.request(&neigh_message(RTM_GETNEIGH, NLM_F_REQUEST, seq, hop, 0, None), seq) {
            Ok(reply) => {
                Ok(Some(parse_neighbour(&reply).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "malformed neighbour reply")
                })?))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces `hop`'s entry as a managed one tagged with `protocol`: the kernel
    /// resolves it now and keeps it resolved.
    pub fn set_managed(&mut self, hop: &NextHop, protocol: u8) -> io::Result<()> {
        let seq = self.next_seq();
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(&neigh_message(RTM_NEWNEIGH, flags, seq, hop, protocol, Some(NTF_EXT_MANAGED)), seq)
            .map(drop)
    }

    /// Deletes `hop`'s entry (absent is fine).
    pub fn delete(&mut self, hop: &NextHop) -> io::Result<()> {
        let seq = self.next_seq();
        match self.request(&neigh_message(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, seq, hop, 0, None), seq) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and returns the payload of its answer (for an ACK-only request, empty).
    fn request(&mut self, msg: &[u8], seq: u32) -> io::Result<Vec<u8>> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for (ty, msg_seq, payload) in messages(&buf[..n as usize]) {
                if msg_seq != seq {
                    continue; // an answer to an earlier request that timed out
                }
                return match ty {
                    NLMSG_ERROR => match error_code(payload) {
                        Some(0) => Ok(Vec::new()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code)),
                        None => Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink error")),
                    },
                    NLMSG_DONE => Ok(Vec::new()),
                    _ => Ok(payload.to_vec()),
                };
            }
        }
    }
}

/// Splits a netlink datagram into (type, sequence, payload) messages.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDR {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDR || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        let payload = &buf[NLMSG_HDR..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((ty, seq, payload))
    })
}

/// The (negative errno or 0) code of an `NLMSG_ERROR` payload.
fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A message with header `ty`/`flags`/`seq` and `body`, its length filled in.
fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// Appends a route attribute (padded to 4 bytes).
fn push_attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + align(len) - len, 0);
}

/// (type, data) of each attribute in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff; // without NLA_F_NESTED/NET_BYTEORDER
        let data = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((ty, data))
    })
}

fn family_and_octets(addr: IpAddr) -> (u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    }
}

fn addr_from(family: u8, data: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(data.get(..4)?).ok()?)),
        AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(data.get(..16)?).ok()?)),
        _ => None,
    }
}

/// `RTM_GETROUTE` for one destination (`ip route get ADDR`).
fn route_request(seq: u32, addr: IpAddr) -> Vec<u8> {
    let (family, octets) = family_and_octets(addr);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut body = vec![family, (octets.len() * 8) as u8, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut body, RTA_DST, &octets);
    message(RTM_GETROUTE, NLM_F_REQUEST, seq, &body)
}

/// The next hop in an `RTM_NEWROUTE` answer (payload without the netlink header).
fn parse_route(payload: &[u8]) -> Option<Route> {
    if payload.len() < 12 {
        return None;
    }
    let family = payload[0];
    let rtype = payload[7];
    if rtype != RTN_UNICAST {
        return Some(Route::NotUnicast(rtype));
    }
    let (mut dst, mut gateway, mut ifindex) = (None, None, None);
    for (ty, data) in attrs(&payload[12..]) {
        match ty {
            RTA_DST => dst = addr_from(family, data),
            RTA_GATEWAY => gateway = addr_from(family, data),
            // struct rtvia: u16 family, then the address (an IPv6 route via an IPv4 gateway).
            RTA_VIA if data.len() >= 2 => gateway = addr_from(data[0], &data[2..]),
            RTA_OIF => ifindex = Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?)),
            _ => {}
        }
    }
    Some(Route::Via(NextHop { ifindex: ifindex?, addr: gateway.or(dst)? }))
}

/// An `ndmsg` request for `hop`, optionally with a protocol tag and extended flags.
fn neigh_message(
    ty: u16,
    flags: u16,
    seq: u32,
    hop: &NextHop,
    protocol: u8,
    ext_flags: Option<u32>,
) -> Vec<u8> {
    let (family, octets) = family_and_octets(hop.addr);
    // struct ndmsg: family, pad, pad (u16), ifindex (i32), state (u16), flags (u8), type (u8).
    // State NUD_NONE: with no link-layer address, the kernel starts resolving.
    let mut body = vec![family, 0, 0, 0];
    body.extend_from_slice(&(hop.ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&[0, 0]);
    push_attr(&mut body, NDA_DST, &octets);
    if protocol != 0 {
        push_attr(&mut body, NDA_PROTOCOL, &[protocol]);
    }
    if let Some(ext) = ext_flags {
        push_attr(&mut body, NDA_FLAGS_EXT, &ext.to_ne_bytes());
    }
    message(ty, flags, seq, &body)
}

/// State, managed flag and protocol of an `RTM_NEWNEIGH` answer.
fn parse_neighbour(payload: &[u8]) -> Option<Neighbour> {
    if payload.len() < 12 {
        return None;
    }
    let state = u16::from_ne_bytes([payload[8], payload[9]]);
    let (mut managed, mut protocol) = (false, 0);
    for (ty, data) in attrs(&payload[12..]) {
        match ty {
            NDA_PROTOCOL => protocol = *data.first()?,
            NDA_FLAGS_EXT => {
                managed = u32::from_ne_bytes(data.get(..4)?.try_into().ok()?) & NTF_EXT_MANAGED != 0
            }
            _ => {}
        }
    }
    Some(Neighbour { state, managed, protocol })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn payload(msg: &[u8]) -> &[u8] {
        let (_, _, p) = messages(msg).next().unwrap();
        p
    }

    #[test]
    fn route_request_for_v4_and_v6() {
        let m = route_request(7, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(m.len(), 16 + 12 + 8);
        let (ty, seq, p) = messages(&m).next().unwrap();
        assert_eq!((ty, seq), (RTM_GETROUTE, 7));
        assert_eq!(&p[..2], &[AF_INET, 32]);
        assert_eq!(attrs(&p[12..]).collect::<Vec<_>>(), vec![(RTA_DST, &[10u8, 1, 2, 3][..])]);
        let m = route_request(8, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(&payload(&m)[..2], &[AF_INET6, 128]);
    }

    /// Builds a route answer like the kernel's.
    fn route_reply(rtype: u8, dst: [u8; 4], gw: Option<[u8; 4]>, oif: u32) -> Vec<u8> {
        let mut p = vec![AF_INET, 32, 0, 0, 254, 0, 0, rtype, 0, 0, 0, 0];
        push_attr(&mut p, 15, &254u32.to_ne_bytes()); // RTA_TABLE, ignored
        push_attr(&mut p, RTA_DST, &dst);
        push_attr(&mut p, RTA_OIF, &oif.to_ne_bytes());
        if let Some(gw) = gw {
            push_attr(&mut p, RTA_GATEWAY, &gw);
        }
        p
    }

    #[test]
    fn a_connected_route_keeps_the_address_itself() {
        let r = parse_route(&route_reply(RTN_UNICAST, [10, 0, 0, 5], None, 3)).unwrap();
        assert_eq!(r, Route::Via(NextHop { ifindex: 3, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)) }));
    }

    #[test]
    fn a_routed_address_keeps_the_gateway() {
        let r = parse_route(&route_reply(RTN_UNICAST, [192, 0, 2, 9], Some([10, 0, 0, 1]), 4)).unwrap();
        assert_eq!(r, Route::Via(NextHop { ifindex: 4, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)) }));
    }

    #[test]
    fn an_ipv6_route_via_an_ipv4_gateway() {
        let mut p = vec![AF_INET6, 128, 0, 0, 254, 0, 0, RTN_UNICAST, 0, 0, 0, 0];
        push_attr(&mut p, RTA_DST, &Ipv6Addr::LOCALHOST.octets());
        push_attr(&mut p, RTA_OIF, &2u32.to_ne_bytes());
        let mut via = (AF_INET as u16).to_ne_bytes().to_vec();
        via.extend_from_slice(&[10, 0, 0, 1]);
        push_attr(&mut p, RTA_VIA, &via);
        let r = parse_route(&p).unwrap();
        assert_eq!(r, Route::Via(NextHop { ifindex: 2, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)) }));
    }

    #[test]
    fn local_and_unreachable_routes_have_no_neighbour() {
        assert_eq!(parse_route(&route_reply(2, [127, 0, 0, 1], None, 1)), Some(Route::NotUnicast(2)));
        assert_eq!(parse_route(&route_reply(7, [10, 9, 9, 9], None, 0)), Some(Route::NotUnicast(7)));
        assert_eq!(parse_route(&[AF_INET, 32]), None, "truncated");
    }

    #[test]
    fn managed_neighbour_request_carries_protocol_and_flag() {
        let hop = NextHop { ifindex: 9, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)) };
        let m =
            neigh_message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_CREATE, 3, &hop, 248, Some(NTF_EXT_MANAGED));
        let p = payload(&m);
        assert_eq!(p[0], AF_INET);
        assert_eq!(i32::from_ne_bytes(p[4..8].try_into().unwrap()), 9);
        assert_eq!(u16::from_ne_bytes([p[8], p[9]]), 0, "NUD_NONE: the kernel resolves it");
        let a: Vec<_> = attrs(&p[12..]).collect();
        assert_eq!(a[0], (NDA_DST, &[10u8, 0, 0, 7][..]));
        assert_eq!(a[1], (NDA_PROTOCOL, &[248u8][..]));
        assert_eq!(a[2], (NDA_FLAGS_EXT, &1u32.to_ne_bytes()[..]));
    }

    #[test]
    fn neighbour_answer_is_parsed() {
        let mut p = vec![AF_INET, 0, 0, 0];
        p.extend_from_slice(&5i32.to_ne_bytes());
        p.extend_from_slice(&0x02u16.to_ne_bytes());
        p.extend_from_slice(&[0, 1]);
        push_attr(&mut p, NDA_DST, &[10, 0, 0, 7]);
        push_attr(&mut p, NDA_PROTOCOL, &[248]);
        push_attr(&mut p, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        assert_eq!(parse_neighbour(&p), Some(Neighbour { state: 0x02, managed: true, protocol: 248 }));
        assert_eq!(parse_neighbour(&p[..6]), None);
    }

    #[test]
    fn errors_and_several_messages_in_one_datagram() {
        let mut d = message(NLMSG_ERROR, 0, 4, &(-libc::ENOENT).to_ne_bytes());
        d.extend(message(NLMSG_DONE, 0, 5, &[]));
        let all: Vec<_> = messages(&d).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(error_code(all[0].2), Some(-libc::ENOENT));
        assert_eq!((all[1].0, all[1].1), (NLMSG_DONE, 5));
        assert_eq!(messages(&d[..10]).count(), 0, "truncated header");
    }
}
