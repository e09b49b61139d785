//! Crafting Ethernet/IPv4/IPv6/TCP frames with correct checksums, and checking the checksums of
//! what the data plane produced. Independent of the data plane's own code except for the
//! one's-complement sum in `lb_common::csum::checksum`, which has its own unit tests.

use lb_common::csum::checksum;
use std::net::{IpAddr, SocketAddr};

/// A MAC address.
pub type Mac = [u8; 6];

/// TCP flags.
pub const SYN: u8 = 0x02;
/// TCP ACK.
pub const ACK: u8 = 0x10;
/// TCP FIN.
pub const FIN: u8 = 0x01;
/// TCP RST.
pub const RST: u8 = 0x04;
/// TCP PSH.
pub const PSH: u8 = 0x08;

/// Description of one TCP frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Source MAC.
    pub src_mac: Mac,
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// TCP flags.
    pub flags: u8,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ipv4_options: Vec<u8>,
    /// IPv4 flags+fragment offset field (host order), e.g. 0x4000 for DF.
    pub ipv4_frag: u16,
    /// TCP payload.
    pub payload: Vec<u8>,
    /// TCP sequence number.
    pub seq: u32,
}

impl Frame {
    /// A SYN from `src` to `dst` with default MACs.
    pub fn syn(src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src,
            dst,
            flags: SYN,
            ipv4_options: Vec::new(),
            ipv4_frag: 0x4000,
            payload: Vec::new(),
            seq: 1000,
        }
    }

    /// The same frame with other flags and a payload.
    pub fn with(mut self, flags: u8, payload: &[u8]) -> Self {
        self.flags = flags;
        self.payload = payload.to_vec();
        self
    }

    /// Serialises the frame with correct IP and TCP checksums.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        let mut tcp = Vec::with_capacity(20 + self.payload.len());
        tcp.extend_from_slice(&self.src.port().to_be_bytes());
        tcp.extend_from_slice(&self.dst.port().to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&(if self.flags & ACK != 0 { 7777u32 } else { 0 }).to_be_bytes());
        tcp.push(5 << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&self.payload);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + self.ipv4_options.len() / 4;
                let total = ihl * 4 + tcp.len();
                let mut ip = vec![(4 << 4) | ihl as u8, 0];
                ip.extend_from_slice(&(total as u16).to_be_bytes());
                ip.extend_from_slice(&0x1234u16.to_be_bytes());
                ip.extend_from_slice(&self.ipv4_frag.to_be_bytes());
                ip.extend_from_slice(&[64, 6, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let c = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_ne_bytes());
                let c = checksum(&tcp, pseudo_sum(&s.octets(), &d.octets(), tcp.len()));
                tcp[16..18].copy_from_slice(&c.to_ne_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                let c = checksum(&tcp, pseudo_sum(&s.octets(), &d.octets(), tcp.len()));
                tcp[16..18].copy_from_slice(&c.to_ne_bytes());
            }
            _ => panic!("source and destination must be of one family"),
        }
        f.extend_from_slice(&tcp);
        f
    }
}

/// An ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" error from a router, as
/// it arrives in a frame: `from` → `to`, quoting the first `quote` bytes of the IP packet inside
/// `offending` (an Ethernet frame as [`Frame::build`] makes it; fewer if it is shorter).
#[derive(Clone, Debug)]
pub struct TooBig {
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Source MAC.
    pub src_mac: Mac,
    /// The router sending the error.
    pub from: IpAddr,
    /// Where the error is sent (the offending packet's source).
    pub to: IpAddr,
    /// Next-hop MTU announced.
    pub mtu: u16,
    /// The packet that was too big.
    pub offending: Frame,
    /// How many bytes of it (from its IP header on) are quoted.
    pub quote: usize,
}

impl TooBig {
    /// An error from `from` about `offending` (sent back to its source), quoting as much as
    /// Linux does for a short packet (all of it), with the default MACs of [`Frame::syn`].
    pub fn about(from: IpAddr, offending: Frame, mtu: u16) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            from,
            to: offending.src.ip(),
            mtu,
            offending,
            quote: usize::MAX,
        }
    }

    /// Serialises the frame with correct IP and ICMP checksums.
    pub fn build(&self) -> Vec<u8> {
        let inner = self.offending.build();
        let l3 = if self.offending.vlan.is_some() { 18 } else { 14 };
        let quoted = &inner[l3..l3 + self.quote.min(inner.len() - l3)];
        let mut f = Vec::with_capacity(128 + quoted.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        let mut icmp = vec![0u8; 8];
        icmp.extend_from_slice(quoted);
        match (self.from, self.to) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                icmp[0] = 3;
                icmp[1] = 4;
                icmp[6..8].copy_from_slice(&self.mtu.to_be_bytes());
                let c = checksum(&icmp, 0);
                icmp[2..4].copy_from_slice(&c.to_ne_bytes());
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, 0xc0];
                ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x56, 0x78, 0, 0, 64, 1, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_ne_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                icmp[0] = 2;
                icmp[4..8].copy_from_slice(&(self.mtu as u32).to_be_bytes());
                let c = checksum(&icmp, upper_pseudo_sum(&s.octets(), &d.octets(), 58, icmp.len()));
                icmp[2..4].copy_from_slice(&c.to_ne_bytes());
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
                f.extend_from_slice(&[58, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("source and destination must be of one family"),
        }
        f.extend_from_slice(&icmp);
        f
    }
}

/// Checks the checksums of an ICMP or ICMPv6 error frame: the outer IPv4 header, the ICMP
/// checksum (ICMPv6: with its pseudo-header) and, for IPv4, the quoted IPv4 header. `Err` says
/// which is wrong; frames that are not ICMP are `Ok`.
pub fn verify_icmp_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < 14 {
        return Ok(());
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let ip = &frame[14..];
            let ihl = (ip[0] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if ip[9] != 1 || total > ip.len() {
                return Ok(());
            }
            if checksum(&ip[..ihl], 0) != 0 {
                return Err("outer IPv4 header checksum".into());
            }
            let icmp = &ip[ihl..total];
            if checksum(icmp, 0) != 0 {
                return Err("ICMP checksum".into());
            }
            let inner = &icmp[8..];
            let inner_ihl = (inner[0] & 0xf) as usize * 4;
            if inner.len() >= inner_ihl && checksum(&inner[..inner_ihl], 0) != 0 {
                return Err("quoted IPv4 header checksum".into());
            }
        }
        0x86DD => {
            let ip = &frame[14..];
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if ip[6] != 58 || 40 + plen > ip.len() {
                return Ok(());
            }
            let icmp = &ip[40..40 + plen];
            if checksum(icmp, upper_pseudo_sum(&ip[8..24], &ip[24..40], 58, plen)) != 0 {
                return Err("ICMPv6 checksum".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// One's-complement sum of the TCP pseudo-header.
fn pseudo_sum(src: &[u8], dst: &[u8], tcp_len: usize) -> u64 {
    upper_pseudo_sum(src, dst, 6, tcp_len)
}

/// One's-complement sum of the pseudo-header of an upper-layer protocol `proto` (TCP, ICMPv6).
fn upper_pseudo_sum(src: &[u8], dst: &[u8], proto: u8, tcp_len: usize) -> u64 {
    let mut sum = 0u64;
    for pair in src.chunks(2).chain(dst.chunks(2)) {
        sum += u16::from_ne_bytes([pair[0], pair[1]]) as u64;
    }
    sum += u16::from_ne_bytes((proto as u16).to_be_bytes()) as u64;
    let len = tcp_len as u32;
    sum += u16::from_ne_bytes(((len >> 16) as u16).to_be_bytes()) as u64;
    sum += u16::from_ne_bytes((len as u16).to_be_bytes()) as u64;
    sum
}

/// Checks the IPv4 header checksum and the TCP checksum of an Ethernet frame. `Err` says which
/// one is wrong; frames that are not TCP over IP are `Ok`.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let mut off = 14;
    if frame.len() < off {
        return Ok(());
    }
    let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == 0x8100 {
        if frame.len() < 18 {
            return Ok(());
        }
        ethertype = u16::from_be_bytes([frame[16], frame[17]]);
        off = 18;
    }
    match ethertype {
        0x0800 => {
            let ip = &frame[off..];
            if ip.len() < 20 {
                return Ok(());
            }
            let ihl = (ip[0] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if ihl < 20 || total > ip.len() || total < ihl || ip[9] != 6 {
                return Ok(());
            }
            if checksum(&ip[..ihl], 0) != 0 {
                return Err("IPv4 header checksum".into());
            }
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
            if frag != 0 || total - ihl < 20 {
                return Ok(());
            }
            let tcp = &ip[ihl..total];
            if checksum(tcp, pseudo_sum(&ip[12..16], &ip[16..20], tcp.len())) != 0 {
                return Err("TCP checksum (IPv4)".into());
            }
        }
        0x86DD => {
            let ip = &frame[off..];
            if ip.len() < 40 || ip[6] != 6 {
                return Ok(());
            }
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if 40 + plen > ip.len() || plen < 20 {
                return Ok(());
            }
            let tcp = &ip[40..40 + plen];
            if checksum(tcp, pseudo_sum(&ip[8..24], &ip[24..40], tcp.len())) != 0 {
                return Err("TCP checksum (IPv6)".into());
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify_and_corrupted_ones_do_not() {
        for (s, d) in [("10.0.0.1:1000", "10.0.0.2:80"), ("[fd00::1]:1000", "[fd00::2]:80")] {
            let mut f = Frame::syn(s.parse().unwrap(), d.parse().unwrap()).with(ACK | PSH, b"hello").build();
            assert_eq!(verify_checksums(&f), Ok(()));
            let last = f.len() - 1;
            f[last] ^= 0x40;
            assert!(verify_checksums(&f).is_err());
        }
    }

    #[test]
    fn built_icmp_errors_verify_and_corrupted_ones_do_not() {
        for (s, d, router) in
            [("10.0.0.1:80", "10.0.0.2:1000", "10.9.9.9"), ("[fd00::1]:80", "[fd00::2]:1000", "fd09::9")]
        {
            let big = Frame::syn(s.parse().unwrap(), d.parse().unwrap()).with(ACK | PSH, &[7u8; 100]);
            let mut f = TooBig::about(router.parse().unwrap(), big, 1400).build();
            assert_eq!(verify_icmp_checksums(&f), Ok(()));
            let last = f.len() - 1;
            f[last] ^= 0x40;
            assert!(verify_icmp_checksums(&f).unwrap_err().contains("ICMP"));
        }
    }
}
