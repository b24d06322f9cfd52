//! Connection state and lifetimes, IPVS style: the datapath tracks a coarse TCP state per flow
//! from the client's flags and stamps the time it last saw a packet; a flow is dead once it has
//! been idle longer than its state's timeout. The same rules decide liveness in the datapath
//! (reschedule a dead flow) and in the agent (ActiveConn/InActConn, draining, garbage collection).

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Coarse flow state kept in [`crate::FlowEntry::state`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// UDP (no connection state): lives while packets keep coming.
    Datagram = 0,
    /// The client sent a SYN; the handshake is not complete.
    SynSent = 1,
    /// The client acknowledged: IPVS's ESTABLISHED, counted as ActiveConn.
    Established = 2,
    /// The client sent a FIN: closing, IPVS's FIN_WAIT/TIME_WAIT.
    Closing = 3,
    /// The client sent a RST.
    Closed = 4,
}

impl FlowState {
    pub const fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::SynSent,
            2 => Self::Established,
            3 => Self::Closing,
            4 => Self::Closed,
            _ => Self::Datagram,
        }
    }

    /// Idle time after which a flow in this state is dead, in seconds: IPVS's defaults
    /// (`ipvsadm --set`: tcp 900, tcpfin 120, udp 300; SYN_RECV 60, CLOSE 10).
    pub const fn timeout_secs(self) -> u32 {
        match self {
            Self::Datagram => 300,
            Self::SynSent => 60,
            Self::Established => 900,
            Self::Closing => 120,
            Self::Closed => 10,
        }
    }

    /// The state after the client sent a TCP segment with `flags`. The flags are read in
    /// IPVS's order (`tcp_state_idx`: RST, then SYN, then FIN, then ACK), so SYN+FIN acts as a
    /// SYN and SYN+RST as a RST, and its input transitions: a SYN leaves an established
    /// connection established and (re)opens anything else.
    pub const fn after_tcp(self, flags: u8) -> Self {
        if flags & TCP_RST != 0 {
            Self::Closed
        } else if flags & TCP_SYN != 0 {
            match self {
                Self::Established => self,
                _ => Self::SynSent,
            }
        } else if flags & TCP_FIN != 0 {
            Self::Closing
        } else if flags & TCP_ACK != 0 {
            match self {
                // Once closing, the final ACKs do not bring the connection back.
                Self::Closing | Self::Closed => self,
                _ => Self::Established,
            }
        } else {
            self
        }
    }

    /// Whether a client packet with `flags` opens a new connection on a flow in this state
    /// (port reuse after close): IPVS then schedules afresh instead of reusing the old backend.
    /// Only a plain SYN does: SYN+FIN and SYN+RST are invalid (Linux conntrack marks them so, and
    /// a listening socket discards them), and SYN+ACK is no client's opening, so none of them
    /// moves a flow to another backend.
    pub const fn reopened_by(self, flags: u8) -> bool {
        flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN && matches!(self, Self::Closing | Self::Closed)
    }

    /// IPVS counts only ESTABLISHED TCP connections as active; everything else is inactive.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Established)
    }
}

/// Whether a flow last seen at `last_seen` (seconds, CLOCK_MONOTONIC) is dead at `now`.
pub const fn expired(state: FlowState, last_seen: u32, now: u32) -> bool {
    now.saturating_sub(last_seen) > state.timeout_secs()
}

/// Whether a session-affinity entry last used at `last_seen` still holds at `now`.
pub const fn affinity_holds(timeout: u32, last_seen: u32, now: u32) -> bool {
    now.saturating_sub(last_seen) <= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_data_and_close() {
        let s = FlowState::Datagram.after_tcp(TCP_SYN);
        assert_eq!(s, FlowState::SynSent);
        let s = s.after_tcp(TCP_ACK);
        assert_eq!(s, FlowState::Established);
        assert!(s.is_active());
        let s = s.after_tcp(TCP_ACK | TCP_FIN);
        assert_eq!(s, FlowState::Closing);
        assert_eq!(s.after_tcp(TCP_ACK), FlowState::Closing, "last ACK keeps it closing");
        assert_eq!(s.after_tcp(TCP_RST), FlowState::Closed);
    }

    #[test]
    fn reopen_only_by_bare_syn_after_close() {
        assert!(FlowState::Closing.reopened_by(TCP_SYN));
        assert!(FlowState::Closed.reopened_by(TCP_SYN));
        assert!(!FlowState::Established.reopened_by(TCP_SYN));
        assert!(!FlowState::Closing.reopened_by(TCP_SYN | TCP_ACK));
        assert!(!FlowState::Closing.reopened_by(TCP_SYN | TCP_FIN), "invalid: never reschedules");
        assert!(!FlowState::Closed.reopened_by(TCP_SYN | TCP_RST), "invalid: never reschedules");
    }

    #[test]
    fn flags_are_read_in_ipvs_order_rst_syn_fin_ack() {
        // SYN+FIN is a SYN: an established connection stays established, as in IPVS's table.
        assert_eq!(FlowState::Established.after_tcp(TCP_SYN | TCP_FIN), FlowState::Established);
        assert_eq!(FlowState::Established.after_tcp(TCP_SYN | TCP_FIN | TCP_ACK), FlowState::Established);
        assert_eq!(FlowState::Closing.after_tcp(TCP_SYN | TCP_FIN), FlowState::SynSent);
        // SYN+RST is a RST.
        assert_eq!(FlowState::Established.after_tcp(TCP_SYN | TCP_RST), FlowState::Closed);
        assert_eq!(FlowState::SynSent.after_tcp(TCP_FIN | TCP_RST), FlowState::Closed);
        // A retransmitted SYN on an established connection does not reopen it.
        assert_eq!(FlowState::Established.after_tcp(TCP_SYN), FlowState::Established);
    }

    #[test]
    fn expiry_by_state() {
        assert!(!expired(FlowState::Established, 100, 1000));
        assert!(expired(FlowState::Established, 100, 1001));
        assert!(expired(FlowState::Closed, 100, 111));
        assert!(!expired(FlowState::Closed, 100, 110));
        // The clock never runs backwards, but a stamp from a racing CPU may be 1 s ahead.
        assert!(!expired(FlowState::Datagram, 101, 100));
    }

    #[test]
    fn affinity_window() {
        assert!(affinity_holds(10800, 0, 10800));
        assert!(!affinity_holds(10800, 0, 10801));
    }
}
