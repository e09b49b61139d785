//! Incremental Internet checksum update (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! Words are taken as they sit in memory (read with native endianness from network-order
//! data): one's-complement addition commutes with byte swapping, so the checksum stored in the
//! packet can be updated without converting anything.

/// Folds a 64-bit one's-complement sum to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
const fn halves(v: u32) -> u64 {
    (v & 0xffff) as u64 + (v >> 16) as u64
}

/// New checksum after one 32-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub const fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    !fold((!check) as u64 + halves(!old) + halves(new))
}

/// New checksum after one 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u64 + (!old) as u64 + new as u64)
}

/// New checksum after a 128-bit address (four words) changed from `old` to `new`.
#[inline(always)]
pub const fn replace_addr(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    !fold(
        (!check) as u64
            + halves(!old[0])
            + halves(!old[1])
            + halves(!old[2])
            + halves(!old[3])
            + halves(new[0])
            + halves(new[1])
            + halves(new[2])
            + halves(new[3]),
    )
}

/// Full checksum of `data` (padded with a zero byte when odd) plus `initial`, as stored in a
/// header: used by tests and by userspace tools to check what the data plane produced.
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    let mut sum = initial;
    let (pairs, rest) = data.as_chunks::<2>();
    for pair in pairs {
        sum += u16::from_ne_bytes(*pair) as u64;
    }
    if let [last] = rest {
        sum += u16::from_ne_bytes([*last, 0]) as u64;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_header() -> [u8; 20] {
        [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0xac, 0x10, 0x0a, 0x63,
            0xac, 0x10, 0x0a, 0x0c,
        ]
    }

    #[test]
    fn full_checksum_of_a_known_ipv4_header() {
        // Classic worked example: checksum 0xb1e6.
        let h = sample_header();
        assert_eq!(u16::from_be_bytes(checksum(&h, 0).to_ne_bytes()), 0xb1e6);
    }

    #[test]
    fn incremental_updates_match_full_recomputation() {
        let mut h = sample_header();
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut x: u32 = 0x1234_5678;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let old = u32::from_ne_bytes(h[16..20].try_into().unwrap());
            let old_check = u16::from_ne_bytes([h[10], h[11]]);
            h[16..20].copy_from_slice(&x.to_ne_bytes());
            let new_check = replace_u32(old_check, old, x);
            h[10..12].copy_from_slice(&new_check.to_ne_bytes());
            assert_eq!(checksum(&h, 0), 0, "header must verify after updating to {x:#x}");
            let p = (x >> 16) as u16;
            let oldp = u16::from_ne_bytes([h[4], h[5]]);
            h[4..6].copy_from_slice(&p.to_ne_bytes());
            let c2 = replace_u16(new_check, oldp, p);
            h[10..12].copy_from_slice(&c2.to_ne_bytes());
            assert_eq!(checksum(&h, 0), 0);
        }
    }

    #[test]
    fn address_replacement_matches_four_word_updates() {
        let old = [1u32, 0xffff_ffff, 0x8000_0000, 7];
        let new = [0xdead_beef, 0, 0x1234, 0xffff_0000];
        let mut c = 0x1a2bu16;
        let direct = replace_addr(c, &old, &new);
        for i in 0..4 {
            c = replace_u32(c, old[i], new[i]);
        }
        assert_eq!(fold((!direct) as u64), fold((!c) as u64));
    }
}
