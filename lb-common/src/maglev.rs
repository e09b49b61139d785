//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI'16, §3.4), built in userspace and loaded into the data plane's
//! lookup table.
//!
//! Every backend gets a permutation of the `M` table slots derived from its key alone:
//! `offset = h1(key) % M`, `skip = h2(key) % (M - 1) + 1`, and the `j`-th preferred slot is
//! `(offset + j * skip) % M`. `M` is prime, so every `skip` is coprime with it and the list visits
//! every slot exactly once. Backends then take turns, in the order of their keys, claiming their
//! next preferred slot that is still free, until all `M` slots are taken.
//!
//! Weights: each round every backend adds its weight to an accumulator and claims one slot each
//! time the accumulator reaches the largest weight (which it then subtracts), so a backend's share
//! of slots is proportional to its weight. A backend of weight 0 takes no slots.
//!
//! The result depends only on the set of `(key, index, weight)` triples and on `M`: the hashes are
//! fixed (FNV-1a 64 with a splitmix64 finalizer, no seed that varies), and the input order does not
//! matter because backends are sorted by key first. The same inputs give the same table on every
//! host and every run.

use std::fmt;

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity of the backend (e.g. `"10.0.0.2:8080"` as bytes). Its permutation derives
    /// from this only, so the same backend lands in mostly the same slots whatever the others are.
    pub key: &'a [u8],
    /// Value written into the table slots this backend owns (the data plane's backend index).
    pub index: u32,
    /// Relative weight; 0 means "takes no slots" (drained).
    pub weight: u32,
}

/// Why a Maglev table could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime number.
    SizeNotPrime {
        /// The size asked for.
        size: u32,
    },
    /// The table size is below 100 slots per backend of non-zero weight.
    SizeTooSmall {
        /// The size asked for.
        size: u32,
        /// Number of backends with a weight above 0.
        backends: usize,
        /// Smallest size accepted for that many backends (`100 * backends`).
        min: u64,
    },
    /// No backend has a weight above 0.
    NoBackends,
    /// Two backends have the same key.
    DuplicateKey {
        /// `index` of the second backend (in input order) carrying the repeated key.
        index: u32,
    },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SizeNotPrime { size } => {
                write!(f, "Maglev table size {size} is not a prime number")
            }
            Self::SizeTooSmall { size, backends, min } => write!(
                f,
                "Maglev table size {size} is too small for {backends} backends \
                 (need at least {min})"
            ),
            Self::NoBackends => write!(f, "no backend with a weight above 0"),
            Self::DuplicateKey { index } => {
                write!(f, "backend {index} has the same key as another backend")
            }
        }
    }
}

impl std::error::Error for MaglevError {}

/// Minimum number of table slots per backend of non-zero weight.
const SLOTS_PER_BACKEND: u64 = 100;

/// Whether `n` is a prime number (deterministic trial division; at most ~33k steps for `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// Smallest prime `>= n`.
///
/// # Panics
///
/// If no such prime fits in a `u32` (`n > 4_294_967_291`, the largest 32-bit prime).
pub fn next_prime(n: u32) -> u32 {
    let mut c = n;
    loop {
        if is_prime(c) {
            return c;
        }
        c = c.checked_add(1).expect("no prime >= n fits in a u32");
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Offset basis of the second hash (the standard one XORed with the golden-ratio constant).
const FNV_OFFSET_2: u64 = FNV_OFFSET ^ 0x9e37_79b9_7f4a_7c15;

/// FNV-1a 64 over `bytes`, starting from `basis`.
fn fnv1a64(basis: u64, bytes: &[u8]) -> u64 {
    let mut h = basis;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64's output function: a bijective avalanche of all 64 bits.
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// First key hash: gives the permutation's offset.
fn h1(key: &[u8]) -> u64 {
    splitmix64_mix(fnv1a64(FNV_OFFSET, key))
}

/// Second key hash, independent of [`h1`]: gives the permutation's skip.
fn h2(key: &[u8]) -> u64 {
    splitmix64_mix(fnv1a64(FNV_OFFSET_2, key).rotate_left(32))
}

/// A backend's progress through its preference list during population.
struct Walker {
    /// Value written into the slots it claims.
    index: u32,
    /// Its weight (> 0).
    weight: u64,
    /// Weight credit not yet spent on a slot.
    acc: u64,
    /// Next slot of its preference list: `(offset + j * skip) % M` for the current `j`.
    pos: u64,
    /// Step of its preference list, in `1..M`.
    skip: u64,
}

/// Builds the table: a `Vec<u32>` of exactly `size` entries, each the `index` of the backend that
/// owns the slot.
///
/// `size` must be prime and at least 100 times the number of backends with a weight above 0.
/// Backends of weight 0 take no slot (but their keys still must not repeat). The checks run in
/// this order: duplicate keys, no backend of non-zero weight, size not prime, size too small.
pub fn build_table(backends: &[MaglevBackend<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    // Sort by key (stable, so a duplicate reports the later one in input order).
    let mut sorted: Vec<&MaglevBackend<'_>> = backends.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(b.key));
    if let Some(w) = sorted.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(MaglevError::DuplicateKey { index: w[1].index });
    }
    sorted.retain(|b| b.weight > 0);
    if sorted.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    let min = SLOTS_PER_BACKEND * sorted.len() as u64;
    if u64::from(size) < min {
        return Err(MaglevError::SizeTooSmall { size, backends: sorted.len(), min });
    }

    let m = u64::from(size);
    let mut walkers: Vec<Walker> = sorted
        .iter()
        .map(|b| Walker {
            index: b.index,
            weight: u64::from(b.weight),
            acc: 0,
            pos: h1(b.key) % m,
            skip: h2(b.key) % (m - 1) + 1,
        })
        .collect();
    let max_weight = walkers.iter().map(|w| w.weight).max().unwrap_or(1);

    let slots = size as usize;
    let mut table = vec![0u32; slots];
    let mut taken = vec![false; slots];
    let mut filled = 0usize;
    // Each round the heaviest backend claims one slot, so this ends after at most M rounds; each
    // walk below ends because a free slot exists and every preference list visits all slots.
    'rounds: loop {
        for w in walkers.iter_mut() {
            w.acc += w.weight;
            while w.acc >= max_weight {
                w.acc -= max_weight;
                loop {
                    let slot = w.pos as usize;
                    w.pos += w.skip;
                    if w.pos >= m {
                        w.pos -= m;
                    }
                    if !taken[slot] {
                        taken[slot] = true;
                        table[slot] = w.index;
                        break;
                    }
                }
                filled += 1;
                if filled == slots {
                    break 'rounds;
                }
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::DEFAULT_RING_SIZE;

    const M: u32 = DEFAULT_RING_SIZE;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256).into_bytes()).collect()
    }

    fn backends<'a>(keys: &'a [Vec<u8>], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        keys.iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (k, &w))| MaglevBackend { key: k, index: i as u32, weight: w })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &i in table {
            c[i as usize] += 1;
        }
        c
    }

    fn assert_shares(weights: &[u32], m: u32) {
        let k = keys(weights.len());
        let table = build_table(&backends(&k, weights), m).unwrap();
        assert_eq!(table.len(), m as usize);
        let c = counts(&table, weights.len());
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for (i, &w) in weights.iter().enumerate() {
            let expect = f64::from(m) * w as f64 / total as f64;
            let got = c[i] as f64;
            if w == 0 {
                assert_eq!(c[i], 0, "weight 0 backend got slots");
            } else {
                assert!(
                    (got - expect).abs() / expect < 0.01,
                    "weights {weights:?}: backend {i} got {got}, expected {expect}"
                );
            }
        }
    }

    #[test]
    fn balance_equal_weights() {
        for n in [1usize, 2, 3, 7, 50, 100] {
            assert_shares(&vec![1; n], M);
        }
        // Equal weights other than 1 behave the same.
        assert_shares(&[7; 5], M);
    }

    #[test]
    fn balance_weighted() {
        assert_shares(&[1, 2, 3, 4], M);
        assert_shares(&[1, 10], M);
        assert_shares(&[10, 1], M);
        assert_shares(&[5, 0, 5, 2], M);
        assert_shares(&[1_000_000, 3_000_000, 7_000_000], M);
        // Extreme weights do not overflow; the light backend gets its (rounded) share of 0 or 1.
        let k = keys(3);
        let t = build_table(&backends(&k, &[u32::MAX, 1, u32::MAX]), M).unwrap();
        let c = counts(&t, 3);
        assert!(c[1] <= 1, "{c:?}");
        assert!(c[0].abs_diff(c[2]) <= 1, "{c:?}");
    }

    #[test]
    fn zero_weight_backends_take_no_slots() {
        let k = keys(4);
        let table = build_table(&backends(&k, &[1, 0, 1, 0]), 401).unwrap();
        assert!(table.iter().all(|&i| i == 0 || i == 2));
        // A drained backend does not change the table of the others.
        let without = build_table(&backends(&k[..1], &[1]), 401).unwrap();
        assert!(without.iter().all(|&i| i == 0));
        let b = backends(&k, &[1, 0, 1, 0]);
        let only_live = [b[0], b[2]];
        assert_eq!(table, build_table(&only_live, 401).unwrap());
    }

    #[test]
    fn preference_lists_are_permutations() {
        let m = 1009u64;
        for k in keys(20) {
            let off = h1(&k) % m;
            let skip = h2(&k) % (m - 1) + 1;
            let mut seen = vec![false; m as usize];
            for j in 0..m {
                seen[((off + j * skip) % m) as usize] = true;
            }
            assert!(seen.iter().all(|&s| s));
        }
        assert_ne!(h1(b"10.0.0.1:80"), h2(b"10.0.0.1:80"));
    }

    /// Number of slots whose owner changed between `a` and `b`, and how many of those were not
    /// owned in `a` by `ignore_a_owner`.
    fn changed(a: &[u32], b: &[u32], ignore_a_owner: Option<u32>) -> (u64, u64) {
        let mut moved_total = 0u64;
        let mut moved_other = 0u64;
        for (x, y) in a.iter().zip(b) {
            if x != y {
                moved_total += 1;
                if Some(*x) != ignore_a_owner {
                    moved_other += 1;
                }
            }
        }
        (moved_total, moved_other)
    }

    #[test]
    fn minimal_disruption_remove_and_add() {
        // Measured at M = 65537, removing backend N/2 of N equal-weight backends (fractions of all
        // M slots; "collateral" = slots that changed owner although their old owner stayed):
        //   N=5 : remove total 0.2007 (ideal 0.2000), collateral 0.0007
        //   N=10: remove total 0.1023 (ideal 0.1000), collateral 0.0023
        //   N=50: remove total 0.0245 (ideal 0.0200), collateral 0.0045
        // Adding it back restores the original table (same fractions). Adding a new backend:
        //   N=5 : total 0.1685 (ideal 0.1667), collateral 0.0018
        //   N=10: total 0.0930 (ideal 0.0909), collateral 0.0021
        //   N=50: total 0.0243 (ideal 0.0196), collateral 0.0047
        // Bounds: collateral below `max_collateral` (about 2x measured), total below ideal + that.
        for (n, max_collateral) in [(5usize, 0.003), (10, 0.006), (50, 0.01)] {
            let k = keys(n);
            let all = backends(&k, &vec![1; n]);
            let full = build_table(&all, M).unwrap();
            let removed = (n / 2) as u32;
            let rest: Vec<_> = all.iter().copied().filter(|b| b.index != removed).collect();
            let less = build_table(&rest, M).unwrap();
            assert!(less.iter().all(|&i| i != removed));

            let (total, collateral) = changed(&full, &less, Some(removed));
            let m = f64::from(M);
            let ideal = 1.0 / n as f64;
            let total_f = total as f64 / m;
            let coll_f = collateral as f64 / m;
            println!("N={n} remove: total {total_f:.4} collateral {coll_f:.4} (ideal {ideal:.4})");
            assert!(coll_f < max_collateral, "N={n}: collateral {coll_f}");
            assert!(total_f < ideal + max_collateral, "N={n}: total {total_f}");

            // Adding it back (N-1 -> N) restores exactly the original table and moves about
            // 1/N of the slots, all of them to the added backend plus the same collateral.
            let back = build_table(&all, M).unwrap();
            assert_eq!(back, full);
            let (total, _) = changed(&less, &back, None);
            let add_f = total as f64 / m;
            println!("N={n} add back: {add_f:.4}");
            assert!(add_f < ideal + max_collateral, "N={n}: add back {add_f}");

            // Adding a brand-new backend (N -> N+1).
            let mut k2 = k.clone();
            k2.push(b"192.168.77.77:8080".to_vec());
            let more = build_table(&backends(&k2, &vec![1; n + 1]), M).unwrap();
            let (total, collateral) = changed(&full, &more, None);
            let ideal_add = 1.0 / (n + 1) as f64;
            let to_new = more.iter().filter(|&&i| i == n as u32).count() as u64;
            let coll_add = (collateral - to_new) as f64 / m;
            let add_new_f = total as f64 / m;
            println!(
                "N={n} add new: total {add_new_f:.4} collateral {coll_add:.4} \
                 (ideal {ideal_add:.4})"
            );
            assert!(coll_add < max_collateral, "N={n}: add new collateral {coll_add}");
            assert!(add_new_f < ideal_add + max_collateral, "N={n}: add new {add_new_f}");
        }
    }

    fn table_checksum(table: &[u32]) -> u64 {
        let mut h = FNV_OFFSET;
        for v in table {
            for b in v.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(FNV_PRIME);
            }
        }
        h
    }

    #[test]
    fn deterministic() {
        let k = keys(7);
        let weights = [3, 1, 4, 1, 5, 9, 2];
        let fwd = backends(&k, &weights);
        let mut rev = fwd.clone();
        rev.reverse();
        let mut shuffled = fwd.clone();
        shuffled.swap(0, 5);
        shuffled.swap(2, 6);
        let a = build_table(&fwd, M).unwrap();
        assert_eq!(a, build_table(&rev, M).unwrap());
        assert_eq!(a, build_table(&shuffled, M).unwrap());
        assert_eq!(a, build_table(&fwd, M).unwrap());

        // Pinned: a change of the hashes or of the population order must fail here.
        assert_eq!(h1(b"10.0.0.2:8080"), PINNED_H1);
        assert_eq!(h2(b"10.0.0.2:8080"), PINNED_H2);
        let small = build_table(&backends(&k[..3], &[1, 2, 1]), 307).unwrap();
        assert_eq!(table_checksum(&small), PINNED_SMALL);
        assert_eq!(table_checksum(&a), PINNED_BIG);
    }

    // Cross-checked against an independent re-implementation of the hashes and the population.
    const PINNED_H1: u64 = 0x7c8a_711f_dce6_eeaa;
    const PINNED_H2: u64 = 0xb209_f3a8_cbb0_3a15;
    const PINNED_SMALL: u64 = 0xdf7c_db6c_efc5_8ec5;
    const PINNED_BIG: u64 = 0xbabb_35f4_5bbc_17f5;

    #[test]
    fn errors() {
        let k = keys(3);
        let b = backends(&k, &[1, 1, 1]);
        assert_eq!(build_table(&b, 65536), Err(MaglevError::SizeNotPrime { size: 65536 }));
        assert_eq!(build_table(&b, 0), Err(MaglevError::SizeNotPrime { size: 0 }));
        assert_eq!(build_table(&b, 1), Err(MaglevError::SizeNotPrime { size: 1 }));
        assert_eq!(build_table(&b, 251), Err(MaglevError::SizeTooSmall { size: 251, backends: 3, min: 300 }));
        assert!(build_table(&b, 307).is_ok());
        // Only backends of non-zero weight count towards the minimum size.
        let b2 = backends(&k, &[1, 0, 1]);
        assert!(build_table(&b2, 211).is_ok());
        assert_eq!(
            build_table(&b2, 199),
            Err(MaglevError::SizeTooSmall { size: 199, backends: 2, min: 200 })
        );
        assert_eq!(build_table(&[], M), Err(MaglevError::NoBackends));
        assert_eq!(build_table(&backends(&k, &[0, 0, 0]), M), Err(MaglevError::NoBackends));

        let dup = [
            MaglevBackend { key: b"a", index: 4, weight: 1 },
            MaglevBackend { key: b"b", index: 5, weight: 1 },
            MaglevBackend { key: b"a", index: 6, weight: 0 },
        ];
        assert_eq!(build_table(&dup, M), Err(MaglevError::DuplicateKey { index: 6 }));

        let e = MaglevError::SizeTooSmall { size: 251, backends: 3, min: 300 };
        assert!(e.to_string().contains("251"));
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn primes() {
        let primes = [2u32, 3, 5, 7, 11, 13, 251, 307, 65_521, 65_537, 65_539, 4_294_967_279, 4_294_967_291];
        for p in primes {
            assert!(is_prime(p), "{p}");
        }
        for n in [0u32, 1, 4, 6, 9, 25, 49, 65_535, 65_536, 65_541, 4_294_967_289, 4_294_967_295] {
            assert!(!is_prime(n), "{n}");
        }
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(2), 2);
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(65_538), 65_539);
        assert_eq!(next_prime(300), 307);
        assert_eq!(next_prime(4_294_967_290), 4_294_967_291);
    }
}
