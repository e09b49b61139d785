//! What the kernel says about one network interface, asked over rtnetlink (`RTM_GETLINK`): its
//! kind (`veth`, `bridge`, … from `IFLA_LINKINFO`; none for a plain NIC driver) and the XDP
//! programs attached to it in each mode (`IFLA_XDP`). The daemon reports the mode the kernel
//! runs, never the mode it asked for, and notices when its program is gone.
//!
//! Netlink, like `/sys/class/net` is not, answers for the network namespace of the calling
//! thread, which is where the daemon attaches.

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
};
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use nix::sys::{
    socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, setsockopt,
        socket, sockopt,
    },
    time::TimeVal,
};

/// The XDP programs attached to an interface, by mode (program ids; `None`: no program in that
/// mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPrograms {
    /// Driver (native) mode.
    pub native: Option<u32>,
    /// Generic (skb) mode.
    pub generic: Option<u32>,
    /// Offloaded to the NIC.
    pub offload: Option<u32>,
}

impl XdpPrograms {
    /// The mode program `id` runs in (`native`, `generic`, `offload`), if it is attached.
    pub fn mode_of(&self, id: u32) -> Option<&'static str> {
        if self.native == Some(id) {
            Some("native")
        } else if self.generic == Some(id) {
            Some("generic")
        } else if self.offload == Some(id) {
            Some("offload")
        } else {
            None
        }
    }

    /// Whether no program is attached in any mode.
    pub fn is_empty(&self) -> bool {
        self.native.is_none() && self.generic.is_none() && self.offload.is_none()
    }
}

/// One interface as the kernel describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netdev {
    /// Interface index.
    pub ifindex: u32,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `vlan`, …); `None` for a device without one (a NIC).
    pub kind: Option<String>,
    /// Attached XDP programs.
    pub xdp: XdpPrograms,
}

impl Netdev {
    /// Whether the interface is a veth (native XDP there needs care, see `links`).
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

/// Whether an error is this process's (descriptors, memory, buffers) rather than something the
/// kernel said about the interface.
pub fn is_local_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Asks the kernel about interface `ifindex`.
pub fn query(ifindex: u32) -> io::Result<Netdev> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)));
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    let socket = RouteSocket::open()?;
    socket.send(&buf)?;
    let mut reply = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut reply)?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {e}")))?;
            let len = msg.header.length as usize;
            if msg.header.sequence_number == 1 {
                match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => return Ok(parse(&m)),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The interface described by an `RTM_NEWLINK` message.
pub fn parse(m: &LinkMessage) -> Netdev {
    let mut dev = Netdev { ifindex: m.header.index, ..Netdev::default() };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        dev.kind = Some(kind_name(kind));
                    }
                }
            }
            LinkAttribute::Xdp(xdp) => dev.xdp = parse_xdp(xdp),
            _ => {}
        }
    }
    dev
}

/// The programs of an `IFLA_XDP` attribute: with one program the kernel sends its mode and
/// `IFLA_XDP_PROG_ID`; with several (`XDP_ATTACHED_MULTI`) one id per mode.
fn parse_xdp(attrs: &[LinkXdp]) -> XdpPrograms {
    let mut attached = None;
    let mut single = None;
    let mut out = XdpPrograms::default();
    for a in attrs {
        match a {
            LinkXdp::Attached(mode) => attached = Some(*mode),
            LinkXdp::ProgId(id) => single = Some(*id),
            LinkXdp::DrvProgId(id) => out.native = Some(*id),
            LinkXdp::SkbProgId(id) => out.generic = Some(*id),
            LinkXdp::HwProgId(id) => out.offload = Some(*id),
            _ => {}
        }
    }
    match (attached, single) {
        (Some(XdpAttached::Driver), Some(id)) => out.native = out.native.or(Some(id)),
        (Some(XdpAttached::SocketBuffer), Some(id)) => out.generic = out.generic.or(Some(id)),
        (Some(XdpAttached::Hardware), Some(id)) => out.offload = out.offload.or(Some(id)),
        _ => {}
    }
    out
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

/// A blocking `NETLINK_ROUTE` socket with a receive timeout.
struct RouteSocket(OwnedFd);

impl RouteSocket {
    fn open() -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        let timeout = Duration::from_secs(2);
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(timeout.as_secs() as _, 0))?;
        Ok(Self(fd))
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // Port 0, no groups: the kernel.
        sendto(self.0.as_raw_fd(), buf, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(recv(self.0.as_raw_fd(), buf, MsgFlags::empty())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_attribute_gives_the_mode_of_each_program() {
        let one_generic = parse_xdp(&[LinkXdp::Attached(XdpAttached::SocketBuffer), LinkXdp::ProgId(42)]);
        assert_eq!(one_generic, XdpPrograms { generic: Some(42), ..Default::default() });
        assert_eq!(one_generic.mode_of(42), Some("generic"));
        assert_eq!(one_generic.mode_of(41), None);
        let one_native = parse_xdp(&[LinkXdp::Attached(XdpAttached::Driver), LinkXdp::ProgId(7)]);
        assert_eq!(one_native.mode_of(7), Some("native"));
        let multi = parse_xdp(&[
            LinkXdp::Attached(XdpAttached::Multiple),
            LinkXdp::DrvProgId(3),
            LinkXdp::HwProgId(4),
        ]);
        assert_eq!((multi.mode_of(3), multi.mode_of(4)), (Some("native"), Some("offload")));
        let none = parse_xdp(&[LinkXdp::Attached(XdpAttached::None)]);
        assert!(none.is_empty());
    }

    #[test]
    fn loopback_is_no_veth_and_local_errors_are_recognized() {
        // Loopback exists in every namespace; its kind is not veth (it has none).
        let lo = query(1).expect("RTM_GETLINK of lo");
        assert_eq!(lo.ifindex, 1);
        assert!(!lo.is_veth());
        assert!(is_local_error(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!is_local_error(&io::Error::from_raw_os_error(libc::ENODEV)));
    }
}
