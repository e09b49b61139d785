//! The MAC address of a local interface, for the data plane's `IFACE_MACS` map.

use std::io;

/// ARP hardware type of Ethernet (`ARPHRD_ETHER`).
const ARPHRD_ETHER: u16 = 1;

/// The MAC address of interface `name` in the calling thread's network namespace (an ioctl,
/// not `/sys/class/net`, which shows the mount namespace's view). `None` for an interface that is
/// not Ethernet (no MAC to check frames against).
pub fn interface_mac(name: &str) -> io::Result<Option<[u8; 6]>> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    let addr = unsafe { req.ifr_ifru.ifru_hwaddr };
    if addr.sa_family != ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(addr.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_ethernet_mac_and_bad_names_are_refused() {
        assert_eq!(interface_mac("lo").unwrap(), None);
        assert!(interface_mac("").is_err());
        assert!(interface_mac("a-name-far-too-long-for-linux").is_err());
    }
}
