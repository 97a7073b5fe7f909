//! The raw libc calls of the UDP transport (Linux): `sendmmsg` with `UDP_SEGMENT` control
//! messages, `recvmmsg` with `UDP_GRO` control messages, socket options and `ppoll`.
//!
//! This is the only module of the UDP backend that contains `unsafe` code. Every function here
//! is safe to call: it takes borrowed Rust data, builds the C structures that point into it for
//! the duration of one system call, and returns plain values.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::time::Duration;

use libc::{c_int, c_uint, c_void};
use socket2::SockAddr;

use crate::TxPkt;

/// `SO_SNDBUFFORCE` / `SO_RCVBUFFORCE` (asm-generic values; `libc` does not export them for
/// every Linux target).
#[cfg(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "loongarch64"
))]
pub(super) const SO_BUFFORCE: Option<(c_int, c_int)> = Some((32, 33));
#[cfg(not(any(
    target_arch = "x86",
    target_arch = "x86_64",
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "loongarch64"
)))]
pub(super) const SO_BUFFORCE: Option<(c_int, c_int)> = None;

/// Room for one control message carrying an `int` (the larger of the `u16` `UDP_SEGMENT` and the
/// `int` `UDP_GRO` payloads), aligned like `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 32]);

// SAFETY: `CMSG_SPACE` is a pure arithmetic helper; it is `unsafe` only because of its C origin.
const CMSG_SPACE_INT: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<c_int>() as c_uint) } as usize;
// SAFETY: as above.
const CMSG_SPACE_U16: usize =
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as c_uint) } as usize;
const _: () = assert!(CMSG_SPACE_INT <= std::mem::size_of::<CmsgBuf>());
const _: () = assert!(CMSG_SPACE_U16 <= std::mem::size_of::<CmsgBuf>());

const ZERO_CMSG: CmsgBuf = CmsgBuf([0; 32]);

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct of integers and raw pointers (plus padding on some
    // libcs), for which all-zero bytes are a valid value (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// One datagram to send: packets `first..first + count` of the burst, concatenated. With
/// `count > 1` it goes out as one GSO super-datagram that the kernel splits every `gso_size`
/// bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct SendMsg {
    /// Index of the first packet in the burst.
    pub first: usize,
    /// Number of packets (segments).
    pub count: usize,
    /// Size of every segment but the last (which may be shorter).
    pub gso_size: u16,
    /// Total bytes of the datagram.
    pub bytes: usize,
    /// The route the datagram goes to.
    pub route: u32,
}

/// Reusable arrays for `sendmmsg`.
#[derive(Default)]
pub(super) struct SendScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<CmsgBuf>,
}

// SAFETY: the raw pointers stored in the scratch arrays are written and read only inside
// `send_batch`, which rebuilds them from borrowed data on every call. Between calls they are
// stale values that nothing dereferences, so moving the scratch to another thread is harmless.
unsafe impl Send for SendScratch {}

/// Number of iovecs one message of `pkts` uses (empty slices are skipped).
fn iov_count(pkts: &[TxPkt<'_>]) -> usize {
    pkts.iter()
        .map(|p| usize::from(!p.hdr.is_empty()) + usize::from(!p.data.is_empty()))
        .sum()
}

/// Sends `msgs` (built from `pkts`) with one `sendmmsg`; returns how many messages the kernel
/// took. An error means the first message failed; `addr` maps a route to its peer address.
pub(super) fn send_batch<'a>(
    fd: RawFd,
    scratch: &mut SendScratch,
    pkts: &[TxPkt<'_>],
    msgs: &[SendMsg],
    connected: bool,
    addr: impl Fn(u32) -> Option<&'a SockAddr>,
) -> io::Result<usize> {
    scratch.hdrs.clear();
    scratch.iovs.clear();
    scratch.ctrl.clear();
    // Pass 1: gather every packet's header and payload into the iovec array (no copy).
    for m in msgs {
        let Some(group) = pkts.get(m.first..m.first.saturating_add(m.count)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        for p in group {
            for s in [p.hdr, p.data] {
                if !s.is_empty() {
                    scratch.iovs.push(libc::iovec {
                        iov_base: s.as_ptr() as *mut c_void,
                        iov_len: s.len(),
                    });
                }
            }
        }
        scratch.ctrl.push(ZERO_CMSG);
    }
    // Pass 2: the arrays no longer grow, so pointers into them stay valid for the call.
    let iov_base = scratch.iovs.as_mut_ptr();
    let ctrl_base = scratch.ctrl.as_mut_ptr();
    let mut iov_at = 0usize;
    for (i, m) in msgs.iter().enumerate() {
        let Some(dst) = addr(m.route) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let n_iov = iov_count(&pkts[m.first..m.first + m.count]);
        let mut h = zeroed_mmsghdr();
        if !connected {
            h.msg_hdr.msg_name = dst.as_ptr() as *mut c_void;
            h.msg_hdr.msg_namelen = dst.len();
        }
        h.msg_hdr.msg_iov = iov_base.wrapping_add(iov_at);
        h.msg_hdr.msg_iovlen = n_iov as _;
        iov_at += n_iov;
        if m.count > 1 && m.gso_size > 0 {
            let ctrl = ctrl_base.wrapping_add(i);
            h.msg_hdr.msg_control = ctrl.cast::<c_void>();
            h.msg_hdr.msg_controllen = CMSG_SPACE_U16 as _;
            // SAFETY: `msg_control` points at `ctrl[i]`, a live, 8-byte aligned, zeroed buffer of
            // 32 bytes >= CMSG_SPACE(2) (checked at compile time), so CMSG_FIRSTHDR returns a
            // non-null pointer to a `cmsghdr` inside it and CMSG_DATA points at 2 writable bytes
            // after it; the payload is written unaligned.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as c_uint) as _;
                ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.gso_size);
            }
        }
        scratch.hdrs.push(h);
    }
    if let [one] = scratch.hdrs.as_slice() {
        // One datagram (the latency path): sendto (one buffer) or sendmsg are cheaper than
        // sendmmsg.
        let h = &one.msg_hdr;
        let rc = if h.msg_controllen == 0 && h.msg_iovlen == 1 {
            let iov = scratch.iovs[0];
            // SAFETY: `iov` describes one live packet slice; name/namelen come from the
            // borrowed peer address. The kernel only reads them.
            unsafe {
                libc::sendto(
                    fd,
                    iov.iov_base,
                    iov.iov_len,
                    0,
                    h.msg_name.cast(),
                    h.msg_namelen,
                )
            }
        } else {
            // SAFETY: as for sendmmsg below, for the single initialised header.
            unsafe { libc::sendmsg(fd, h, 0) }
        };
        return if rc < 0 { Err(last_error()) } else { Ok(1) };
    }
    // SAFETY: `hdrs` holds `hdrs.len()` initialised headers whose name, iovec and control
    // pointers reference `addr`'s results, `scratch.iovs`/`scratch.ctrl` and the packet slices,
    // all borrowed for the whole call and not moved since pass 2 took their addresses. The
    // kernel only reads them (and writes `msg_len`, inside `hdrs`).
    let rc = unsafe {
        libc::sendmmsg(
            fd,
            scratch.hdrs.as_mut_ptr(),
            scratch.hdrs.len() as c_uint,
            0,
        )
    };
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(rc as usize)
    }
}

/// Sends one datagram made of `hdr` followed by `data` (either may be empty) to `dst`, or to
/// the connected peer when `dst` is `None`: `sendto` for one buffer, `sendmsg` for two. The
/// latency path, without the arrays `send_batch` builds for a burst.
pub(super) fn send_one(
    fd: RawFd,
    hdr: &[u8],
    data: &[u8],
    dst: Option<&SockAddr>,
) -> io::Result<()> {
    let (name, namelen) = match dst {
        Some(a) => (a.as_ptr(), a.len()),
        None => (ptr::null(), 0),
    };
    let rc = if hdr.is_empty() || data.is_empty() {
        let buf = if hdr.is_empty() { data } else { hdr };
        // SAFETY: `buf` is a live borrowed slice of `buf.len()` bytes; `name`/`namelen` are
        // null/0 or come from the borrowed peer address. The kernel only reads them.
        unsafe { libc::sendto(fd, buf.as_ptr().cast(), buf.len(), 0, name, namelen) }
    } else {
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: data.as_ptr() as *mut c_void,
                iov_len: data.len(),
            },
        ];
        // SAFETY: `msghdr` is a plain C struct for which all-zero bytes are a valid value.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = name as *mut c_void;
        h.msg_namelen = namelen;
        h.msg_iov = iov.as_mut_ptr();
        h.msg_iovlen = 2;
        // SAFETY: `h` points at two iovecs describing live borrowed slices and at the borrowed
        // peer address (or none), all alive for the call; the kernel only reads them.
        unsafe { libc::sendmsg(fd, &h, 0) }
    };
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// What `recvmmsg` reported for one message.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RecvMeta {
    /// Bytes placed in the buffer.
    pub len: usize,
    /// The datagram did not fit (`MSG_TRUNC`).
    pub truncated: bool,
    /// `UDP_GRO` segment size when the kernel coalesced several datagrams, else 0.
    pub segment_size: usize,
}

/// Reusable arrays for `recvmmsg`.
#[derive(Default)]
pub(super) struct RecvScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    ctrl: Vec<CmsgBuf>,
    /// Results of the last `recv_batch`, one per received message.
    pub meta: Vec<RecvMeta>,
}

// SAFETY: as for `SendScratch`: the pointers are rebuilt by every `recv_batch` call from the
// buffers it borrows and never dereferenced outside it.
unsafe impl Send for RecvScratch {}

/// Receives up to `k` datagrams with one non-blocking `recvmmsg`, datagram `i` into
/// `bufs[(first + i) * chunk .. (first + i + 1) * chunk]`. Results land in `scratch.meta`.
/// With `gro`, room for a `UDP_GRO` control message is provided and decoded.
pub(super) fn recv_batch(
    fd: RawFd,
    scratch: &mut RecvScratch,
    bufs: &mut [u8],
    chunk: usize,
    first: usize,
    k: usize,
    gro: bool,
) -> io::Result<usize> {
    scratch.meta.clear();
    let end = first
        .checked_add(k)
        .and_then(|e| e.checked_mul(chunk))
        .ok_or(io::ErrorKind::InvalidInput)?;
    if k == 0 || end > bufs.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let base = bufs.as_mut_ptr();
    scratch.iovs.clear();
    for i in 0..k {
        scratch.iovs.push(libc::iovec {
            iov_base: base.wrapping_add((first + i) * chunk).cast::<c_void>(),
            iov_len: chunk,
        });
    }
    if scratch.ctrl.len() < k {
        scratch.ctrl.resize(k, ZERO_CMSG);
    }
    scratch.hdrs.clear();
    let iov_base = scratch.iovs.as_mut_ptr();
    let ctrl_base = scratch.ctrl.as_mut_ptr();
    for i in 0..k {
        let mut h = zeroed_mmsghdr();
        h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
        h.msg_hdr.msg_iovlen = 1;
        if gro {
            h.msg_hdr.msg_control = ctrl_base.wrapping_add(i).cast::<c_void>();
            h.msg_hdr.msg_controllen = CMSG_SPACE_INT as _;
        }
        scratch.hdrs.push(h);
    }
    let rc = if k == 1 && !gro {
        // SAFETY: `iovs[0]` covers an in-bounds `chunk`-byte range of the mutably borrowed
        // `bufs`; no address wanted. With MSG_TRUNC the real datagram length is returned.
        let n = unsafe {
            libc::recvfrom(
                fd,
                scratch.iovs[0].iov_base,
                chunk,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(last_error());
        }
        let n = n as usize;
        scratch.meta.push(RecvMeta {
            len: n.min(chunk),
            truncated: n > chunk,
            segment_size: 0,
        });
        return Ok(1);
    } else if let [one] = scratch.hdrs.as_mut_slice() {
        // One datagram (the latency path): plain recvmsg is a little cheaper than recvmmsg.
        // SAFETY: as for recvmmsg below, for the single initialised header.
        let n = unsafe { libc::recvmsg(fd, &mut one.msg_hdr, libc::MSG_DONTWAIT) };
        if n >= 0 {
            one.msg_len = n as c_uint;
            1
        } else {
            -1
        }
    } else {
        // SAFETY: `hdrs[..k]` are initialised; each points at one iovec covering a disjoint,
        // in-bounds `chunk`-byte range of `bufs` (checked above: (first + k) * chunk <= len)
        // and, with `gro`, at its own 32-byte control buffer. `bufs` is borrowed mutably for
        // the call, so nothing else observes the kernel's writes. MSG_DONTWAIT: never blocks.
        unsafe {
            libc::recvmmsg(
                fd,
                scratch.hdrs.as_mut_ptr(),
                k as c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        }
    };
    if rc < 0 {
        return Err(last_error());
    }
    let n = (rc as usize).min(k);
    for h in &scratch.hdrs[..n] {
        let mut segment_size = 0;
        if gro {
            // SAFETY: the kernel set `msg_controllen` to the bytes it wrote into this header's
            // control buffer (at most the CMSG_SPACE_INT we offered), so the CMSG_* walk stays
            // inside that live buffer; the `int` payload is read unaligned.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>());
                        segment_size = usize::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
        }
        scratch.meta.push(RecvMeta {
            len: (h.msg_len as usize).min(chunk),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            segment_size,
        });
    }
    Ok(n)
}

/// Dissolves a UDP socket's association with its peer (`connect` to `AF_UNSPEC`).
pub(super) fn disconnect(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zeroed `sockaddr` with family AF_UNSPEC is a valid argument for dissolving
    // the association (connect(2)); the kernel only reads `size_of::<sockaddr>()` bytes.
    let rc = unsafe {
        let mut sa: libc::sockaddr = std::mem::zeroed();
        sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            ptr::from_ref(&sa),
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// The path MTU the kernel knows for a connected socket (`IP_MTU` / `IPV6_MTU`).
pub(super) fn path_mtu(fd: RawFd, v6: bool) -> io::Result<usize> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live local `c_int` and its size; the kernel writes at
    // most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            ptr::from_mut(&mut value).cast::<c_void>(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(usize::try_from(value).unwrap_or(0))
    }
}

/// `setsockopt` with an `int` value.
pub(super) fn set_int_opt(fd: RawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live local `c_int` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            ptr::from_ref(&value).cast::<c_void>(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// Waits with `ppoll` until `fd` is readable or `timeout` passes (`None`: forever). Returns
/// whether it is readable; an interrupted wait returns `Ok(false)`.
pub(super) fn poll_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts.as_ref().map_or(ptr::null(), ptr::from_ref);
    // SAFETY: one live `pollfd`, a null or live `timespec`, and a null signal mask (keep the
    // current one), as ppoll(2) allows.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, ptr::null()) };
    if rc < 0 {
        let e = last_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}
