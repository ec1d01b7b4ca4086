//! Rendezvous (highest-random-weight) hashing of keys over servers.
//!
//! A key goes to the server whose weight `mix(fnv1a64(server + "\n" + key))` is highest, where
//! `server` is `host:port` as written in the URL, `fnv1a64` is 64-bit FNV-1a and `mix` is the
//! SplitMix64 finalizer. Removing a server moves only the keys it held; adding one moves only the
//! keys it now wins (about 1/N of them). The order of servers in the URL does not matter.

/// The router handed to the memcache client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rendezvous;

/// 64-bit FNV-1a over the concatenation of `parts`.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The SplitMix64 finalizer, spreading FNV's weak low bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The index in `servers` of the server that holds `key`.
pub fn pick(key: &[u8], servers: &[String]) -> usize {
    let mut best = (0usize, 0u64);
    for (i, s) in servers.iter().enumerate() {
        let w = mix(fnv1a64(&[s.as_bytes(), b"\n", key]));
        if i == 0 || w > best.1 {
            best = (i, w);
        }
    }
    best.0
}

impl memcache::exp::Router for Rendezvous {
    fn route(&self, key: &[u8], servers: &[String]) -> usize {
        pick(key, servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    #[test]
    fn adding_a_server_moves_about_one_in_n_keys() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("tpl:{i:064x}")).collect();
        let (three, four) = (servers(3), servers(4));
        let moved = keys
            .iter()
            .filter(|k| three[pick(k.as_bytes(), &three)] != four[pick(k.as_bytes(), &four)])
            .count();
        let ratio = moved as f64 / keys.len() as f64;
        assert!((0.2..0.3).contains(&ratio), "moved {ratio}");
        // Every moved key went to the new server.
        assert!(keys.iter().all(|k| {
            let (a, b) = (
                &three[pick(k.as_bytes(), &three)],
                &four[pick(k.as_bytes(), &four)],
            );
            a == b || b == "10.0.0.3:11211"
        }));
    }

    #[test]
    fn keys_spread_evenly_and_order_does_not_matter() {
        let s = servers(4);
        let mut reversed = s.clone();
        reversed.reverse();
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            let k = format!("k{i}");
            let a = pick(k.as_bytes(), &s);
            assert_eq!(s[a], reversed[pick(k.as_bytes(), &reversed)]);
            counts[a] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn known_vector_keeps_the_distribution_stable() {
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }
}
