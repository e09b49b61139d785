//! A one-hash bit filter kept in a BPF array (`VIP_FILTER`, `BACKEND_FILTER`): one array load
//! tells the data plane that a packet cannot be for a VIP (or from a NAT backend), so traffic
//! for the host itself skips the hash-table lookups. False positives only cost a lookup.

use crate::hash::fmix32;

/// Bits in one filter (a power of two).
pub const FILTER_BITS: u32 = 1 << 16;
/// `u64` words in one filter: the size of the filter arrays.
pub const FILTER_WORDS: u32 = FILTER_BITS / 64;

/// Which bit of the filter stands for `addr`:`port` (address words and port as in the packet).
#[inline(always)]
pub fn filter_bit(addr: &[u32; 4], port: u16) -> u32 {
    let folded = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    fmix32(folded ^ (u32::from(port) << 7)) & (FILTER_BITS - 1)
}

/// Array index and bit mask of a filter bit.
#[inline(always)]
pub const fn word_and_mask(bit: u32) -> (u32, u64) {
    (bit >> 6, 1u64 << (bit & 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ports_of_one_address_use_distinct_bits() {
        let a = [0x0100_000au32, 0, 0, 0];
        let mut seen = std::collections::BTreeSet::new();
        for p in [22u16, 80, 443, 8080, 53, 25] {
            seen.insert(filter_bit(&a, p.to_be()));
        }
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn bits_stay_inside_the_filter() {
        for i in 0..10_000u32 {
            let (w, m) = word_and_mask(filter_bit(&[i, !i, i << 3, 0], i as u16));
            assert!(w < FILTER_WORDS && m.count_ones() == 1);
        }
    }
}
