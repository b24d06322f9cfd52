//! rtnetlink link events (the `RTNLGRP_LINK` group): an interface created, deleted or renamed in
//! the agent's network namespace wakes the agent at once, so a re-created interface gets the
//! datapath back as soon as it exists instead of at the next periodic check. The events are
//! not parsed: any of them is worth the check (an ifindex and a few stat calls per interface),
//! and a burst wakes the agent once.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::sync::mpsc;

use super::error::DataplaneError;

/// `RTMGRP_LINK`: the link group's bit in `sockaddr_nl.nl_groups`.
const RTMGRP_LINK: u32 = 1;

pub struct LinkEvents {
    wake: mpsc::Receiver<()>,
}

impl LinkEvents {
    /// Joins the link group; a thread reads the socket and wakes [`Self::changed`].
    pub fn subscribe() -> Result<Self, DataplaneError> {
        let failed = |what: &'static str| DataplaneError::LinkEvents { what, source: std::io::Error::last_os_error() };
        // SAFETY: plain socket(2); the descriptor is owned right after.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(failed("open a NETLINK_ROUTE socket for link events"));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; family and groups are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = RTMGRP_LINK;
        // SAFETY: `addr` is a sockaddr_nl of the size passed.
        let bound = unsafe { libc::bind(socket.as_raw_fd(), (&raw const addr).cast(), size_of::<libc::sockaddr_nl>() as libc::socklen_t) };
        if bound != 0 {
            return Err(failed("join the rtnetlink link group"));
        }
        let (tx, wake) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("xvs-link-events".into())
            .spawn(move || read_events(&socket, &tx))
            .map_err(|source| DataplaneError::LinkEvents { what: "start the reader", source })?;
        Ok(Self { wake })
    }

    /// Resolves when an interface changed since the last call (never, once the reader stopped).
    pub async fn changed(&mut self) {
        if self.wake.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Reads until the agent goes (the channel closes) or the socket fails; an overrun (ENOBUFS:
/// events were lost) is a change too.
fn read_events(socket: &OwnedFd, tx: &mpsc::Sender<()>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {}
                _ => {
                    tracing::warn!(error = %e, "link events stopped; interfaces are still checked every second");
                    return;
                }
            }
        }
        match tx.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => return,
        }
    }
}
