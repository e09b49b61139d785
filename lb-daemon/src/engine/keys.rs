//! Addresses as the maps store them: the words and family of an IP, the `EndpointKey` of an
//! (address, port), and an ordered form of a key for set membership.

use lb_common::maps::{EndpointKey, FAMILY_V4, FAMILY_V6, PROTO_TCP};
use std::net::{IpAddr, SocketAddr};

/// Address words and family as the maps store them.
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The map key of an (address, port).
pub fn endpoint_key(addr: &SocketAddr) -> EndpointKey {
    let (words, family) = addr_words(addr.ip());
    EndpointKey { addr: words, port: addr.port().to_be(), proto: PROTO_TCP, family }
}

/// Bytes of a key, for set membership (the map types do not implement `Ord`).
pub(crate) fn key_bytes(k: &EndpointKey) -> ([u32; 4], u16, u8, u8) {
    (k.addr, k.port, k.proto, k.family)
}
