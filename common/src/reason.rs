//! Why a packet got the verdict it got: one enum that is both the datapath's error type and the
//! index of its per-CPU counter in `XVS_REASONS`.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Passed untouched: IP packet to no known (VIP, port, proto).
    NotService = 0,
    /// Passed untouched: not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 1,
    /// Passed untouched: headers truncated or invalid (IHL < 5, short L4 header, ...); the kernel
    /// makes its own decision about such a packet.
    Malformed = 2,
    /// Passed untouched: an IP fragment. Only whole datagrams can be matched to a flow, so
    /// fragmented service traffic is left to the kernel (documented limitation).
    Fragment = 3,
    /// Passed untouched: an IPv6 extension header xvs does not walk (ESP, AH, ...).
    Ipv6ExtUnsupported = 4,
    /// Passed untouched: not TCP or UDP (SCTP, ICMP other than errors about NATed flows, ...).
    NotTcpUdp = 5,
    /// Forwarded: a new flow was scheduled to a backend.
    NewFlow = 6,
    /// Forwarded: the flow's backend came from the connection table.
    Established = 7,
    /// Forwarded: the flow's pinned backend was gone, so it was scheduled again.
    Rescheduled = 8,
    /// Reply rewritten from backend back to the VIP.
    ReplyNat = 9,
    /// Dropped: the service has no backend that takes new flows.
    NoBackend = 10,
    /// Dropped: the connection table refused the new entry (fail closed).
    ConntrackFull = 11,
    /// Dropped: the selection table named a backend id with no backend behind it.
    BackendMissing = 12,
    /// Dropped: a packet rewrite helper failed (TC only).
    RewriteFailed = 13,
    /// Counted beside the packet's verdict: mh's fallback walk met only backends that take no
    /// new flows for `maglev::MH_WALK_HOPS` hops (the kernel's walk goes on), and the flow went
    /// to the next live bucket's backend instead.
    MhWalkExhausted = 14,
    /// Dropped: a new flow from a client outside the service's source ranges
    /// (`loadBalancerSourceRanges`).
    SourceRangeDenied = 15,
    /// Rewritten: an ICMP error quoting a NATed flow's packet, translated along the flow (the
    /// quoted packet, the error's own address and every checksum; see icmp.rs).
    IcmpErrorNat = 16,
    /// Rewritten (TC egress): a masqueraded flow's packet to its backend left with the egress
    /// interface's address and the flow's SNAT port as its source (snat.rs).
    Masquerade = 17,
    /// Rewritten (ingress): a backend's reply to a masquerade address and port was sent on to
    /// the flow's client (its source becomes the VIP on the client's egress, as any reply).
    Unmasquerade = 18,
    /// Dropped (TC egress): no free SNAT port for this backend and address after every try;
    /// the client's retransmission tries again.
    SnatPortsExhausted = 19,
    /// Passed without masquerading (TC egress): the interface has no address of the packet's
    /// family to masquerade to (the agent writes one per served interface).
    SnatNoAddress = 20,
}

pub const REASON_COUNT: u32 = 21;

impl Reason {
    pub const ALL: [Self; REASON_COUNT as usize] = [
        Self::NotService,
        Self::NotIp,
        Self::Malformed,
        Self::Fragment,
        Self::Ipv6ExtUnsupported,
        Self::NotTcpUdp,
        Self::NewFlow,
        Self::Established,
        Self::Rescheduled,
        Self::ReplyNat,
        Self::NoBackend,
        Self::ConntrackFull,
        Self::BackendMissing,
        Self::RewriteFailed,
        Self::MhWalkExhausted,
        Self::SourceRangeDenied,
        Self::IcmpErrorNat,
        Self::Masquerade,
        Self::Unmasquerade,
        Self::SnatPortsExhausted,
        Self::SnatNoAddress,
    ];

    /// Stable snake_case name used in metrics and CLI output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotService => "not_service",
            Self::NotIp => "not_ip",
            Self::Malformed => "malformed",
            Self::Fragment => "fragment",
            Self::Ipv6ExtUnsupported => "ipv6_ext_unsupported",
            Self::NotTcpUdp => "not_tcp_udp",
            Self::NewFlow => "new_flow",
            Self::Established => "established",
            Self::Rescheduled => "rescheduled",
            Self::ReplyNat => "reply_nat",
            Self::NoBackend => "no_backend",
            Self::ConntrackFull => "conntrack_full",
            Self::BackendMissing => "backend_missing",
            Self::RewriteFailed => "rewrite_failed",
            Self::MhWalkExhausted => "mh_walk_exhausted",
            Self::SourceRangeDenied => "source_range_denied",
            Self::IcmpErrorNat => "icmp_error_nat",
            Self::Masquerade => "masquerade",
            Self::Unmasquerade => "unmasquerade",
            Self::SnatPortsExhausted => "snat_ports_exhausted",
            Self::SnatNoAddress => "snat_no_address",
        }
    }

    /// True when the datapath drops the packet for this reason.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Self::NoBackend | Self::ConntrackFull | Self::BackendMissing | Self::RewriteFailed | Self::SourceRangeDenied
                | Self::SnatPortsExhausted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_indexed_by_discriminant() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
