//! Internet checksum arithmetic: incremental updates (RFC 1624) and full computation.
//!
//! Words are 16-bit values loaded from packet memory in native byte order; the one's-complement
//! sum is byte-order independent (RFC 1071 §2B) as long as fields and checksum use the same
//! order, so no swapping is needed anywhere.

/// Folds a 32-bit accumulator of 16-bit words into a 16-bit one's-complement sum.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Splits an address word into the two 16-bit words it occupies in memory (order irrelevant).
#[inline(always)]
pub const fn split(word: u32) -> [u16; 2] {
    [word as u16, (word >> 16) as u16]
}

/// RFC 1624 eqn. 3: the checksum after 16-bit words `old` were replaced by `new`:
/// `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn replace(check: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut sum = u32::from(!check);
    let mut i = 0;
    while i < old.len() && i < new.len() {
        sum += u32::from(!old[i]) + u32::from(new[i]);
        i += 1;
    }
    !fold(sum)
}

/// Incremental update for an address change (4 words, IPv4 uses only word 0) and a port change.
#[inline(always)]
pub fn replace_addr_port(check: u16, old_addr: &[u32; 4], new_addr: &[u32; 4], old_port: u16, new_port: u16, v6: bool) -> u16 {
    let a = split(old_addr[0]);
    let b = split(new_addr[0]);
    let mut c = replace(check, &[a[0], a[1], old_port], &[b[0], b[1], new_port]);
    if v6 {
        let mut w = 1;
        while w < 4 {
            c = replace(c, &split(old_addr[w]), &split(new_addr[w]));
            w += 1;
        }
    }
    c
}

/// UDP over IPv4 may carry no checksum (0); a transmitted 0 means "none", so a computed 0 is
/// sent as 0xffff (RFC 768).
#[inline(always)]
pub const fn udp_mangled_zero(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

/// Full one's-complement sum over bytes (big-endian word view), not folded or inverted.
/// Host-side helper for tests and tools; the datapath only updates incrementally.
pub fn sum_bytes(bytes: &[u8], mut acc: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([pair[0], pair[1]])));
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([*last, 0])));
    }
    // Fold early enough that long inputs cannot overflow.
    (acc & 0xffff) + (acc >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum of a buffer whose checksum field is at `at` (zeroed for the computation).
    fn full(buf: &[u8], at: usize) -> u16 {
        let mut b = [0u8; 64];
        b[..buf.len()].copy_from_slice(buf);
        b[at] = 0;
        b[at + 1] = 0;
        !fold(sum_bytes(&b[..buf.len()], 0))
    }

    fn ne16(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn incremental_matches_full_recompute_for_ipv4_header_dst_change() {
        // 20-byte IPv4 header, checksum at 10, daddr at 16.
        let mut hdr: [u8; 20] = [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 10, 0, 1, 2, 10, 96, 0, 10,
        ];
        let c = full(&hdr, 10).to_be_bytes();
        hdr[10..12].copy_from_slice(&c);
        let old = u32::from_ne_bytes([10, 96, 0, 10]);
        let new = u32::from_ne_bytes([10, 0, 12, 2]);
        let check = replace(ne16(&hdr, 10), &split(old), &split(new));
        hdr[16..20].copy_from_slice(&new.to_ne_bytes());
        assert_eq!(check.to_ne_bytes(), full(&hdr, 10).to_be_bytes());
    }

    #[test]
    fn incremental_matches_full_over_many_values() {
        // A pseudo "header" of 8 words with the checksum in word 0; change words 2..4.
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..10_000 {
            let mut b = [0u8; 16];
            for x in b.iter_mut().skip(2) {
                *x = next() as u8;
            }
            let c = full(&b, 0).to_be_bytes();
            b[0..2].copy_from_slice(&c);
            let old = [ne16(&b, 4), ne16(&b, 6)];
            let new = [next() as u16, next() as u16];
            let check = replace(ne16(&b, 0), &old, &new);
            b[4..6].copy_from_slice(&new[0].to_ne_bytes());
            b[6..8].copy_from_slice(&new[1].to_ne_bytes());
            // Verify by summing everything including the checksum: valid iff 0xffff (or the
            // all-zero edge case where +0 and -0 coincide).
            let total = fold(sum_bytes(&{
                let mut t = b;
                t[0..2].copy_from_slice(&check.to_ne_bytes());
                t
            }, 0));
            assert_eq!(total, 0xffff, "{b:?}");
        }
    }

    #[test]
    fn udp_zero_becomes_all_ones() {
        assert_eq!(udp_mangled_zero(0), 0xffff);
        assert_eq!(udp_mangled_zero(0x1234), 0x1234);
    }
}
