//! IPVS's Maglev hashing scheduler (`ip_vs_mh`), the parts the datapath runs per packet: the
//! lookup-table size and the kernel's hash. The agent builds the table (`ip_vs_mh_populate`)
//! from the same hash; the datapath looks a client up in it and, when the destination there
//! takes no new flows, walks on as the kernel's `mh-fallback` does.

/// `IP_VS_MH_TAB_SIZE` with the default `CONFIG_IP_VS_MH_TAB_INDEX=12` (Debian, Ubuntu, RHEL):
/// the prime 4093.
pub const MH_TABLE_SIZE: u32 = 4093;
/// `IP_VS_MH_TAB_BITS`: `CONFIG_IP_VS_MH_TAB_INDEX / 2`, the bits a destination's weight keeps
/// (after dividing by the gcd) before the kernel shifts them away.
pub const MH_TABLE_BITS: u32 = 6;

/// Hops of the fallback walk the ingress programs take inline; a longer walk goes on in the
/// walker program (tail calls), as far as the kernel's. Each hop lands on a bucket at random,
/// so with a fraction `a` of the table on backends that take new flows, a walk needs the
/// walker with probability `(1 - a)^4`: 0.4% at three quarters. Inline, the verifier checks
/// each hop once per path into the scheduler (16 hops take 6.1's verifier past 1M
/// instructions).
pub const MH_WALK_HOPS: u32 = 4;

/// An mh slot holds the backend id in its low 16 bits. A bucket whose backend takes no new
/// flows also holds, in its high 16 bits, the backend of the next bucket that does: where the
/// datapath's walk ends after [`MH_WALK_HOPS`], it takes that one, so a client is never
/// refused while a backend is live. A table with no live backend is not written at all.
pub const MH_SLOT_ID_MASK: u32 = 0xffff;
pub const MH_SLOT_FALLBACK_SHIFT: u32 = 16;

/// Hops one run of the walker program takes (it then jumps to itself to go on): 16 runs and
/// the jump back stay within the kernel's 33 tail calls.
pub const MH_WALK_CHUNK: u32 = 256;
/// Entries of the jump tables (`XVS_XDP_JUMP`, `XVS_TC_JUMP`): the walker, the program
/// that started the walk (run again, it takes the walk's result), and the ingress half of
/// masquerading (replies to a masquerade address, see ebpf/src/snat.rs), kept out of the
/// ingress program whose verification is at the kernel's limit.
pub const JUMP_MH_WALK: u32 = 0;
pub const JUMP_INGRESS: u32 = 1;
pub const JUMP_UNMASQ: u32 = 2;
/// Entries of each jump table.
pub const JUMP_ENTRIES: u32 = 3;

/// A walk beyond the datapath's inline hops, handed to the walker program through a per-CPU
/// entry (one for XDP, one for TC): the walk runs to the kernel's full length there, and the
/// ingress program, run again on the same packet, takes `result` when the entry matches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MhWalk {
    pub saddr: [u32; 4],
    pub svc_id: u32,
    /// The table walked (a table written since has another base: the result is not used).
    pub slot_base: u32,
    pub ihash: u32,
    /// The next hop to take.
    pub hop: u32,
    /// The backend found (a slot value without fallback), or 0: none takes new flows.
    pub result: u32,
    /// The first bucket's fallback, taken if a jump fails.
    pub fallback: u32,
    pub port_be: u16,
    pub v6: u8,
    /// `MH_WALK_*`.
    pub state: u8,
}

pub const MH_WALK_IDLE: u8 = 0;
pub const MH_WALK_RUNNING: u8 = 1;
pub const MH_WALK_DONE: u8 = 2;

/// The kernel's fixed keys (`generate_hash_secret`): every node computes the same table, so a
/// client reaches the same backend whichever node it enters by.
pub const MH_KEY1: [u64; 2] = [2_654_435_761, 2_654_435_761];
pub const MH_KEY2: [u64; 2] = [2_654_446_892, 2_654_446_892];

const SIP_CONST: [u64; 4] = [0x736f_6d65_7073_6575, 0x646f_7261_6e64_6f6d, 0x6c79_6765_6e65_7261, 0x7465_6462_7974_6573];

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// The kernel's `hsiphash(&v, 4, key)` on 64-bit machines, where it is SipHash-1-3 (lib/siphash.c)
/// truncated to 32 bits; the four bytes are read little-endian, so the input is `v` itself.
#[inline(always)]
pub fn hsiphash_u32(v: u32, key: &[u64; 2]) -> u32 {
    let mut s = [SIP_CONST[0] ^ key[0], SIP_CONST[1] ^ key[1], SIP_CONST[2] ^ key[0], SIP_CONST[3] ^ key[1]];
    let b = (4u64 << 56) | u64::from(v);
    s[3] ^= b;
    sip_round(&mut s);
    s[0] ^= b;
    s[2] ^= 0xff;
    sip_round(&mut s);
    sip_round(&mut s);
    sip_round(&mut s);
    ((s[0] ^ s[1]) ^ (s[2] ^ s[3])) as u32
}

/// The kernel's `ip_vs_mh_hashkey()`: the address folded to 32 bits (IPv6: the xor of its
/// words), plus the port, plus `offset`, hashed with `key`. `addr` is in map representation
/// (raw network-order words), `port_be` in network order (0 unless the service hashes ports).
#[inline(always)]
pub fn mh_hash(addr: &[u32; 4], v6: bool, port_be: u16, offset: u32, key: &[u64; 2]) -> u32 {
    let fold = if v6 { addr[0] ^ addr[1] ^ addr[2] ^ addr[3] } else { addr[0] };
    let v = offset.wrapping_add(u32::from(u16::from_be(port_be))).wrapping_add(u32::from_be(fold));
    hsiphash_u32(v, key)
}

/// Where a client's walk starts: its bucket (`ihash`).
#[inline(always)]
pub fn mh_bucket(addr: &[u32; 4], v6: bool, port_be: u16) -> u32 {
    mh_hash(addr, v6, port_be, 0, &MH_KEY1) % MH_TABLE_SIZE
}

/// The bucket of hop `hop` of the kernel's fallback walk from `ihash`
/// (`ip_vs_mh_get_fallback`: offset `(hop + ihash) % size` fed into the hash).
#[inline(always)]
pub fn mh_fallback_bucket(addr: &[u32; 4], v6: bool, port_be: u16, ihash: u32, hop: u32) -> u32 {
    let offset = (hop + ihash) % MH_TABLE_SIZE;
    mh_hash(addr, v6, port_be, offset, &MH_KEY1) % MH_TABLE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsiphash_matches_the_kernel_self_test() {
        // lib/siphash_kunit.c (64-bit): key 00..0f, input bytes 00 01 02 03 -> 0x88d38328.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        assert_eq!(hsiphash_u32(0x0302_0100, &key), 0x88d3_8328);
    }

    #[test]
    fn the_walk_starts_at_the_bucket_and_folds_v6() {
        let v4 = crate::addr_v4([10, 0, 0, 1]);
        let ihash = mh_bucket(&v4, false, 0);
        assert!(ihash < MH_TABLE_SIZE);
        // Hop 0 hashes offset ihash: a different bucket than ihash in general, as in the kernel.
        assert_eq!(mh_fallback_bucket(&v4, false, 0, ihash, 0), mh_hash(&v4, false, 0, ihash, &MH_KEY1) % MH_TABLE_SIZE);
        let words = [0xfd00_0001u32, 0x0000_0100, 0x1234_5678, 7];
        let v6 = words.map(u32::to_be);
        assert_eq!(mh_hash(&v6, true, 0, 0, &MH_KEY1), hsiphash_u32(words[0] ^ words[1] ^ words[2] ^ words[3], &MH_KEY1));
        assert_eq!(mh_hash(&v4, false, 80u16.to_be(), 5, &MH_KEY2), hsiphash_u32(0x0a00_0001 + 80 + 5, &MH_KEY2));
    }
}
