//! ipvsadm's listing order, exactly. libipvs compares services by fwmark, family, protocol,
//! address and port (`ipvs_cmp_services`) and servers by address and port (`ipvs_cmp_dests`),
//! each address word as the *signed* difference of two unsigned 32-bit values, so 192.168.x and
//! 172.18.x sort before 10.96.x, and fd00:: before 2001:db8::. It sorts with glibc's qsort, a
//! stable top-down merge sort; that comparator is not transitive for every set of addresses
//! (10.x < 100.x < 192.x < 10.x), so the same algorithm on the same input order is what gives
//! the same output.
use std::net::{IpAddr, SocketAddr};

use crate::model::ServiceId;

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// `union nf_inet_addr` as host-order words: IPv4 in the first, the rest zero.
fn words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from(v4), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
        }
    }
}

/// `r = ntohl(a) - ntohl(b)` into an `int`, word by word for IPv6 (`a`'s family decides).
fn cmp_addr(a: IpAddr, b: IpAddr) -> i32 {
    let (wa, wb) = (words(a), words(b));
    let n = if a.is_ipv6() { 4 } else { 1 };
    wa.iter().zip(&wb).take(n).map(|(x, y)| x.wrapping_sub(*y) as i32).find(|&r| r != 0).unwrap_or(0)
}

fn family(ip: IpAddr) -> i32 {
    if ip.is_ipv6() { AF_INET6 } else { AF_INET }
}

/// libipvs's `ipvs_cmp_services` for address-based services (fwmark 0).
pub fn cmp_services(a: &ServiceId, b: &ServiceId) -> i32 {
    let r = family(a.vip) - family(b.vip);
    if r != 0 {
        return r;
    }
    let r = i32::from(a.proto.number()) - i32::from(b.proto.number());
    if r != 0 {
        return r;
    }
    let r = cmp_addr(a.vip, b.vip);
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// libipvs's `ipvs_cmp_dests`.
pub fn cmp_dests(a: &SocketAddr, b: &SocketAddr) -> i32 {
    let r = cmp_addr(a.ip(), b.ip());
    if r != 0 {
        return r;
    }
    i32::from(a.port()) - i32::from(b.port())
}

/// Sorts `items` as glibc's qsort (msort.c) does with `cmp`: split at n/2, sort both halves,
/// merge taking from the left while `cmp(left, right) <= 0`.
pub fn qsort<T>(items: &mut Vec<T>, cmp: impl Fn(&T, &T) -> i32) {
    let mut index: Vec<usize> = (0..items.len()).collect();
    msort(&mut index, &|a, b| cmp(&items[*a], &items[*b]));
    let mut slots: Vec<Option<T>> = std::mem::take(items).into_iter().map(Some).collect();
    items.extend(index.into_iter().filter_map(|i| slots[i].take()));
}

fn msort(v: &mut [usize], cmp: &dyn Fn(&usize, &usize) -> i32) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let (left, right) = v.split_at_mut(n / 2);
    msort(left, cmp);
    msort(right, cmp);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if cmp(&left[i], &right[j]) <= 0 {
            merged.push(left[i]);
            i += 1;
        } else {
            merged.push(right[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&left[i..]);
    merged.extend_from_slice(&right[j..]);
    v.copy_from_slice(&merged);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn svc(s: &str) -> ServiceId {
        let (proto, addr) = s.split_once(' ').unwrap_or(("TCP", s));
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        ServiceId { vip: addr.ip(), port: addr.port(), proto: if proto == "UDP" { Protocol::Udp } else { Protocol::Tcp } }
    }

    fn sorted(input: &[&str]) -> Vec<String> {
        let mut v: Vec<ServiceId> = input.iter().map(|s| svc(s)).collect();
        qsort(&mut v, cmp_services);
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn addresses_compare_as_signed_differences_like_ipvsadm() {
        // ipvsadm -ln on the Debian VM lists these in exactly this order.
        assert_eq!(
            sorted(&["10.96.0.10:80", "192.168.50.10:30080", "172.18.0.5:80", "UDP 10.96.0.10:53", "[2001:db8::1]:80", "[fd00::10]:80"]),
            ["TCP 172.18.0.5:80", "TCP 192.168.50.10:30080", "TCP 10.96.0.10:80", "UDP 10.96.0.10:53", "TCP [fd00::10]:80", "TCP [2001:db8::1]:80"]
        );
        let mut dests: Vec<SocketAddr> = ["10.0.11.2:8080", "192.168.1.2:80", "10.0.11.2:80"].iter().filter_map(|s| s.parse().ok()).collect();
        qsort(&mut dests, cmp_dests);
        assert_eq!(dests.iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.168.1.2:80", "10.0.11.2:80", "10.0.11.2:8080"]);
    }

    #[test]
    fn a_cycle_is_ordered_as_glibc_s_merge_sort_orders_it() {
        // 10 < 100 < 192 < 10 under this comparator: the result depends on the input order,
        // as glibc's qsort gives it (checked against glibc 2.36 with the same comparator).
        assert_eq!(sorted(&["10.0.0.1:80", "100.0.0.1:80", "192.0.0.1:80"]), ["TCP 10.0.0.1:80", "TCP 100.0.0.1:80", "TCP 192.0.0.1:80"]);
        assert_eq!(sorted(&["192.0.0.1:80", "100.0.0.1:80", "10.0.0.1:80"]), ["TCP 192.0.0.1:80", "TCP 10.0.0.1:80", "TCP 100.0.0.1:80"]);
    }
}
