//! The few rtnetlink requests the neighbour keeper needs, over a plain `NETLINK_ROUTE` socket:
//! which next hop the kernel would use for an address, and reading, adding and deleting
//! neighbour entries. The messages are the typed ones of `netlink-packet-route`; building a
//! request and reading an answer are pure functions with unit tests.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAttribute, NeighbourExtFlags, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType, RouteVia},
};
use nix::sys::{
    socket::{
        self, AddressFamily as SocketFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
        sockopt::ReceiveTimeout,
    },
    time::TimeVal,
};
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
};

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
    /// Anything else (local address, blackhole, unreachable...): no neighbour to keep; the
    /// route's `RTN_*` type.
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
        let fd = socket::socket(
            SocketFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        // Requests are answered at once; never let a lost reply hang the caller.
        socket::setsockopt(&fd, ReceiveTimeout, &TimeVal::new(2, 0))?;
        Ok(Self { fd, seq: 0 })
    }

    /// The next hop of the kernel's route to `addr`.
    pub fn route_to(&mut self, addr: IpAddr) -> io::Result<Route> {
        let seq = self.next_seq();
        match self.request(route_request(seq, addr), seq)? {
            Some(RouteNetlinkMessage::NewRoute(route)) => parse_route(&route)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "route reply without a next hop")),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected answer to a route request")),
        }
    }

    /// The neighbour entry of `hop`, if there is one.
    pub fn neighbour(&mut self, hop: &NextHop) -> io::Result<Option<Neighbour>> {
        let seq = self.next_seq();
        let request = finish(RouteNetlinkMessage::GetNeighbour(neigh_message(hop, None)), NLM_F_REQUEST, seq);
        match self.request(request, seq) {
            Ok(Some(RouteNetlinkMessage::NewNeighbour(n))) => Ok(Some(parse_neighbour(&n))),
            Ok(_) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected answer to a neighbour request"))
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
        let message = RouteNetlinkMessage::NewNeighbour(neigh_message(hop, Some(protocol)));
        self.request(finish(message, flags, seq), seq).map(drop)
    }

    /// Deletes `hop`'s entry (absent is fine).
    pub fn delete(&mut self, hop: &NextHop) -> io::Result<()> {
        let seq = self.next_seq();
        let message = RouteNetlinkMessage::DelNeighbour(neigh_message(hop, None));
        match self.request(finish(message, NLM_F_REQUEST | NLM_F_ACK, seq), seq) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and returns its answer (`None` for an acknowledgement).
    fn request(
        &mut self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        seq: u32,
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        socket::sendto(self.fd.as_raw_fd(), &out, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            if let Some(answer) = answer_to(&buf[..n], seq)? {
                return answer;
            }
        }
    }
}

/// The answer to request `seq` in one received datagram: `None` when the datagram holds only
/// answers to earlier requests (that timed out); else the message, an acknowledgement (`None`)
/// or the kernel's error.
#[allow(clippy::type_complexity)]
fn answer_to(mut datagram: &[u8], seq: u32) -> io::Result<Option<io::Result<Option<RouteNetlinkMessage>>>> {
    let malformed =
        |e: netlink_packet_core::DecodeError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    while !datagram.is_empty() {
        let len = NetlinkBuffer::new_checked(datagram).map_err(malformed)?.length() as usize;
        let message =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[..len]).map_err(malformed)?;
        datagram = &datagram[((len + 3) & !3).min(datagram.len())..];
        if message.header.sequence_number != seq {
            continue;
        }
        return Ok(Some(match message.payload {
            NetlinkPayload::InnerMessage(m) => Ok(Some(m)),
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::Error(_) | NetlinkPayload::Done(_) | NetlinkPayload::Noop => Ok(None),
            NetlinkPayload::Overrun(_) => Err(io::Error::other("netlink overrun")),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unknown netlink payload")),
        }));
    }
    Ok(None)
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A finished netlink message (length and type filled in) carrying `inner`.
fn finish(inner: RouteNetlinkMessage, flags: u16, seq: u32) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    msg.finalize();
    msg
}

/// `RTM_GETROUTE` for one destination (`ip route get ADDR`).
fn route_request(seq: u32, addr: IpAddr) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut route = RouteMessage::default();
    route.header.address_family = family(addr);
    route.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    route.attributes.push(RouteAttribute::Destination(RouteAddress::from(addr)));
    finish(RouteNetlinkMessage::GetRoute(route), NLM_F_REQUEST, seq)
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The next hop in an `RTM_NEWROUTE` answer; `None` when a unicast route lacks its interface
/// or address.
fn parse_route(route: &RouteMessage) -> Option<Route> {
    if route.header.kind != RouteType::Unicast {
        return Some(Route::NotUnicast(route.header.kind.into()));
    }
    let (mut dst, mut gateway, mut ifindex) = (None, None, None);
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_addr(a),
            RouteAttribute::Gateway(a) => gateway = route_addr(a),
            // An IPv6 route via an IPv4 gateway (or the other way round).
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            _ => {}
        }
    }
    Some(Route::Via(NextHop { ifindex: ifindex?, addr: gateway.or(dst)? }))
}

/// An `ndmsg` for `hop`; with `protocol`, a managed entry tagged with it. Its state is
/// `NUD_NONE`: with no link-layer address given, the kernel starts resolving.
fn neigh_message(hop: &NextHop, protocol: Option<u8>) -> NeighbourMessage {
    let mut n = NeighbourMessage::default();
    n.header.family = family(hop.addr);
    n.header.ifindex = hop.ifindex;
    n.attributes.push(NeighbourAttribute::Destination(hop.addr.into()));
    if let Some(protocol) = protocol {
        n.attributes.push(NeighbourAttribute::Protocol(RouteProtocol::from(protocol)));
        n.attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    }
    n
}

/// State, managed flag and protocol of an `RTM_NEWNEIGH` answer.
fn parse_neighbour(n: &NeighbourMessage) -> Neighbour {
    let mut out = Neighbour { state: n.header.state.into(), managed: false, protocol: 0 };
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Protocol(p) => out.protocol = (*p).into(),
            NeighbourAttribute::ExtFlags(f) => out.managed = f.contains(NeighbourExtFlags::Managed),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, ErrorMessage, NLMSG_DONE};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn bytes(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        out
    }

    /// The kernel's `RTM_*` type, flags and sequence of a serialized message, and its body
    /// (after the 16-byte `nlmsghdr`).
    fn header_and_body(raw: &[u8]) -> (u16, u16, u32, &[u8]) {
        let b = NetlinkBuffer::new_checked(raw).unwrap();
        (b.message_type(), b.flags(), b.sequence_number(), &raw[16..b.length() as usize])
    }

    #[test]
    fn route_request_for_v4_and_v6() {
        let raw = bytes(&route_request(7, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))));
        assert_eq!(raw.len(), 16 + 12 + 8);
        let (ty, flags, seq, body) = header_and_body(&raw);
        assert_eq!((ty, flags, seq), (26 /* RTM_GETROUTE */, NLM_F_REQUEST, 7));
        assert_eq!(&body[..2], &[libc::AF_INET as u8, 32]);
        // RTA_DST (1), 8 bytes long, the address.
        assert_eq!(&body[12..], &[8, 0, 1, 0, 10, 1, 2, 3]);
        let raw = bytes(&route_request(8, IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(&header_and_body(&raw).3[..2], &[libc::AF_INET6 as u8, 128]);
    }

    /// A route answer like the kernel's.
    fn route_reply(kind: RouteType, dst: [u8; 4], gw: Option<[u8; 4]>, oif: u32) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = 32;
        r.header.table = 254;
        r.header.kind = kind;
        r.attributes.push(RouteAttribute::Table(254));
        r.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst.into())));
        r.attributes.push(RouteAttribute::Oif(oif));
        if let Some(gw) = gw {
            r.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw.into())));
        }
        r
    }

    /// `msg` as the kernel would send it in answer to request `seq`.
    fn datagram(inner: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
        bytes(&finish(inner, 0, seq))
    }

    #[test]
    fn a_connected_route_keeps_the_address_itself() {
        let r = parse_route(&route_reply(RouteType::Unicast, [10, 0, 0, 5], None, 3)).unwrap();
        assert_eq!(r, Route::Via(NextHop { ifindex: 3, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)) }));
    }

    #[test]
    fn a_routed_address_keeps_the_gateway() {
        let reply = route_reply(RouteType::Unicast, [192, 0, 2, 9], Some([10, 0, 0, 1]), 4);
        // Through the wire format, as the kernel's answer arrives.
        let raw = datagram(RouteNetlinkMessage::NewRoute(reply), 11);
        let Some(Ok(Some(RouteNetlinkMessage::NewRoute(parsed)))) = answer_to(&raw, 11).unwrap() else {
            panic!("not a route answer");
        };
        let r = parse_route(&parsed).unwrap();
        assert_eq!(r, Route::Via(NextHop { ifindex: 4, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)) }));
    }

    #[test]
    fn an_ipv6_route_via_an_ipv4_gateway() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet6;
        r.header.kind = RouteType::Unicast;
        r.attributes.push(RouteAttribute::Destination(RouteAddress::Inet6(Ipv6Addr::LOCALHOST)));
        r.attributes.push(RouteAttribute::Oif(2));
        r.attributes.push(RouteAttribute::Via(RouteVia::Inet(Ipv4Addr::new(10, 0, 0, 1))));
        let raw = datagram(RouteNetlinkMessage::NewRoute(r), 1);
        let Some(Ok(Some(RouteNetlinkMessage::NewRoute(parsed)))) = answer_to(&raw, 1).unwrap() else {
            panic!("not a route answer");
        };
        let r = parse_route(&parsed).unwrap();
        assert_eq!(r, Route::Via(NextHop { ifindex: 2, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)) }));
    }

    #[test]
    fn local_and_unreachable_routes_have_no_neighbour() {
        let local = route_reply(RouteType::Local, [127, 0, 0, 1], None, 1);
        assert_eq!(parse_route(&local), Some(Route::NotUnicast(2)));
        let unreachable = route_reply(RouteType::Unreachable, [10, 9, 9, 9], None, 0);
        assert_eq!(parse_route(&unreachable), Some(Route::NotUnicast(7)));
        let mut no_oif = route_reply(RouteType::Unicast, [10, 0, 0, 5], None, 3);
        no_oif.attributes.retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        assert_eq!(parse_route(&no_oif), None, "a unicast route without an interface");
    }

    #[test]
    fn managed_neighbour_request_carries_protocol_and_flag() {
        let hop = NextHop { ifindex: 9, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)) };
        let flags = NLM_F_REQUEST | NLM_F_CREATE;
        let raw = bytes(&finish(RouteNetlinkMessage::NewNeighbour(neigh_message(&hop, Some(248))), flags, 3));
        let (ty, got_flags, seq, p) = header_and_body(&raw);
        assert_eq!((ty, got_flags, seq), (28 /* RTM_NEWNEIGH */, flags, 3));
        assert_eq!(p[0], libc::AF_INET as u8);
        assert_eq!(i32::from_ne_bytes(p[4..8].try_into().unwrap()), 9);
        assert_eq!(u16::from_ne_bytes([p[8], p[9]]), 0, "NUD_NONE: the kernel resolves it");
        // NDA_DST (1) = the address; NDA_PROTOCOL (12) = 248 (padded); NDA_FLAGS_EXT (15) = managed.
        let mut attrs = vec![8, 0, 1, 0, 10, 0, 0, 7, 5, 0, 12, 0, 248, 0, 0, 0, 8, 0, 15, 0];
        attrs.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(&p[12..], &attrs[..]);
        let del = bytes(&finish(RouteNetlinkMessage::DelNeighbour(neigh_message(&hop, None)), 0, 4));
        assert_eq!(header_and_body(&del).0, 29 /* RTM_DELNEIGH */);
        assert_eq!(header_and_body(&del).3.len(), 12 + 8, "no protocol, no flags");
    }

    #[test]
    fn neighbour_answer_is_parsed() {
        let hop = NextHop { ifindex: 5, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)) };
        let mut n = neigh_message(&hop, Some(248));
        n.header.state = 0x02u16.into();
        let raw = datagram(RouteNetlinkMessage::NewNeighbour(n), 2);
        let Some(Ok(Some(RouteNetlinkMessage::NewNeighbour(parsed)))) = answer_to(&raw, 2).unwrap() else {
            panic!("not a neighbour answer");
        };
        assert_eq!(parse_neighbour(&parsed), Neighbour { state: 0x02, managed: true, protocol: 248 });
        let plain = neigh_message(&hop, None);
        assert_eq!(parse_neighbour(&plain), Neighbour { state: 0, managed: false, protocol: 0 });
        assert!(answer_to(&raw[..10], 2).is_err(), "truncated header");
    }

    #[test]
    fn errors_and_several_messages_in_one_datagram() {
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::ENOENT);
        let mut header = NetlinkHeader::default();
        header.sequence_number = 4;
        let mut e = NetlinkMessage::<RouteNetlinkMessage>::new(header, NetlinkPayload::Error(error));
        e.finalize();
        let mut d = bytes(&e);
        // A stale answer to an earlier request, then the one awaited.
        let mut done_header = NetlinkHeader::default();
        done_header.sequence_number = 5;
        done_header.message_type = NLMSG_DONE;
        done_header.length = 16;
        let mut raw_done = vec![0u8; 16];
        done_header.emit(&mut raw_done);
        d.extend_from_slice(&raw_done);
        let got = answer_to(&d, 4).unwrap().unwrap().unwrap_err();
        assert_eq!(got.raw_os_error(), Some(libc::ENOENT));
        assert!(matches!(answer_to(&d, 5), Ok(Some(Ok(None)))), "done = nothing more");
        assert!(matches!(answer_to(&d, 6), Ok(None)), "no answer to 6 in this datagram");
    }
}
