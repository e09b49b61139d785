//! The flow hash: picks a flow's Maglev slot. The XDP program and the daemon's tests must agree
//! on it exactly, so it lives here, is pure integer arithmetic and has no seed that varies.

use crate::maps::FlowKey;

const MIX: u32 = 0x9E37_79B1;

#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    (h ^ v).wrapping_mul(MIX).rotate_left(15)
}

/// Final avalanche (MurmurHash3's fmix32): every input bit affects every output bit.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    h
}

/// Hash of a flow's 5-tuple (client to VIP direction), stable across hosts and versions.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = 0x5bd1_e995 ^ u32::from(key.proto);
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, (u32::from(key.sport) << 16) | u32::from(key.dport));
    fmix32(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: u32, sport: u16) -> FlowKey {
        FlowKey {
            src: [src.to_be(), 0, 0, 0],
            dst: [0x0a00_0001u32.to_be(), 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn hash_is_a_fixed_function() {
        // Pinned values: changing the hash would move every flow on an upgrade.
        assert_eq!(flow_hash(&key(0xc0a8_0001, 40000)), flow_hash(&key(0xc0a8_0001, 40000)));
        assert_eq!(flow_hash(&FlowKey::default()), 0x8707_f34e);
    }

    #[test]
    fn source_ports_spread_evenly_over_buckets() {
        let mut buckets = [0u32; 16];
        for p in 0..16_000u16 {
            buckets[(flow_hash(&key(0xc0a8_0001, 10_000 + p)) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "bucket count {b} is far from 1000");
        }
    }
}
