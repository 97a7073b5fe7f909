//! [`IbvDevice`]: the [`VerbsDevice`] of a real RDMA NIC (ConnectX, Soft-RoCE, ...) through
//! libibverbs.
//!
//! The datapath keeps persistent, pre-linked C work-request arrays: `send_wrs[i].next` points
//! at `send_wrs[i + 1]` and `sg_list` at its own SGE array from the moment they are allocated.
//! A post fills the fields of the first `n` entries, cuts the chain after entry `n - 1`, calls
//! the provider once through `ctx->ops` (what the `static inline` `ibv_post_send` does) and
//! restores the link — no allocation per post. The arrays grow (and are re-linked) only when a
//! caller posts a longer list than ever before. Completions are polled into a persistent
//! `ibv_wc` array and converted.
//!
//! This module and `ffi.rs` are the only ones that call into C.
#![allow(unsafe_code)]

pub mod ffi;

use std::ffi::CStr;
use std::ptr;
use std::time::Duration;

use libc::{c_int, c_void};

use super::dma::DmaMem;
use super::verbs::*;
use ffi::*;

/// Names of the RDMA devices libibverbs sees. `Err(NoDevice)` when the list cannot be read —
/// without RDMA support in the kernel `ibv_get_device_list` returns NULL with `errno` ENOSYS.
pub fn device_names() -> Result<Vec<String>, VerbsError> {
    let list = DeviceList::get("any device")?;
    Ok(list.names())
}

struct DeviceList {
    list: *mut *mut ibv_device,
    n: usize,
}

impl DeviceList {
    fn get(wanted: &str) -> Result<Self, VerbsError> {
        let mut n: c_int = 0;
        // SAFETY: `ibv_get_device_list` writes the count to the valid `n` and returns a
        // NULL-terminated array that we own until `ibv_free_device_list` (in `Drop`).
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            let e = std::io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::ENOSYS) {
                " (ENOSYS: this kernel has no RDMA support — no ib_uverbs module)"
            } else {
                ""
            };
            return Err(VerbsError::NoDevice {
                wanted: wanted.into(),
                reason: format!("ibv_get_device_list failed: {e}{hint}"),
            });
        }
        Ok(Self {
            list,
            n: usize::try_from(n).unwrap_or(0),
        })
    }

    fn device(&self, i: usize) -> *mut ibv_device {
        if i >= self.n {
            return ptr::null_mut();
        }
        // SAFETY: `i < n`, the number of entries libibverbs reported for this live array.
        unsafe { *self.list.add(i) }
    }

    fn name_of(dev: *mut ibv_device) -> String {
        if dev.is_null() {
            return String::new();
        }
        // SAFETY: `dev` is a device of the live list; `ibv_get_device_name` returns a
        // NUL-terminated string owned by the device, which we copy at once.
        unsafe {
            let p = ibv_get_device_name(dev);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }

    fn names(&self) -> Vec<String> {
        (0..self.n).map(|i| Self::name_of(self.device(i))).collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from `ibv_get_device_list` and is freed once; opened contexts
        // stay valid after the list is freed (ibv_get_device_list(3)).
        unsafe { ibv_free_device_list(self.list) }
    }
}

fn errno_now() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(op: &'static str, ret: c_int) -> Result<(), VerbsError> {
    if ret == 0 {
        Ok(())
    } else {
        // Verbs return the errno value itself (some providers return it negated).
        Err(VerbsError::errno(op, ret.abs()))
    }
}

fn non_null<T>(op: &'static str, p: *mut T) -> Result<*mut T, VerbsError> {
    if p.is_null() {
        Err(VerbsError::errno(op, errno_now()))
    } else {
        Ok(p)
    }
}

/// Allocates `n` (at least 1) work requests and their SGE arrays and links them once: request
/// `i` gets its own SGE array and `next` = request `i + 1` (the last: NULL). The vectors may be
/// moved (their heap buffers do not), so the links stay valid until they are dropped.
fn linked<W>(
    n: usize,
    empty: impl Fn() -> W,
    link: impl Fn(&mut W, *mut W, *mut ibv_sge),
) -> (Vec<W>, Vec<[ibv_sge; MAX_SGE]>) {
    let n = n.max(1);
    let mut sges = vec![[ibv_sge::default(); MAX_SGE]; n];
    let mut wrs: Vec<W> = (0..n).map(|_| empty()).collect();
    let base = wrs.as_mut_ptr();
    for (i, (wr, sg)) in wrs.iter_mut().zip(sges.iter_mut()).enumerate() {
        let next = if i + 1 < n {
            // SAFETY: `i + 1 < n`: the pointer stays inside the `n`-element buffer.
            unsafe { base.add(i + 1) }
        } else {
            ptr::null_mut()
        };
        link(wr, next, sg.as_mut_ptr());
    }
    (wrs, sges)
}

/// An open libibverbs device context.
pub struct IbvDevice {
    ctx: *mut ibv_context,
    name: String,
    pds: Slab<*mut ibv_pd>,
    mrs: Slab<(*mut ibv_mr, DmaMem)>,
    cqs: Slab<*mut ibv_cq>,
    srqs: Slab<*mut ibv_srq>,
    qps: Slab<*mut ibv_qp>,
    ahs: Slab<*mut ibv_ah>,
    send_wrs: Vec<ibv_send_wr>,
    send_sges: Vec<[ibv_sge; MAX_SGE]>,
    recv_wrs: Vec<ibv_recv_wr>,
    recv_sges: Vec<[ibv_sge; MAX_SGE]>,
    wcs: Vec<ibv_wc>,
}

// SAFETY: libibverbs objects may be used from any thread (verbs are thread-safe); an
// `IbvDevice` is used by one thread at a time (`&mut self`), and the raw pointers it holds are
// owned by it alone.
unsafe impl Send for IbvDevice {}

impl std::fmt::Debug for IbvDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvDevice")
            .field("name", &self.name)
            .finish()
    }
}

impl IbvDevice {
    /// Opens the device named `name`, or the first device when `None`.
    pub fn open(name: Option<&str>) -> Result<Self, VerbsError> {
        let wanted = name.map_or_else(|| "any device".to_string(), |n| format!("device {n:?}"));
        let list = DeviceList::get(&wanted)?;
        if list.n == 0 {
            return Err(VerbsError::NoDevice {
                wanted,
                reason: "ibv_get_device_list returned an empty list".into(),
            });
        }
        let index = match name {
            None => 0,
            Some(n) => (0..list.n)
                .find(|&i| DeviceList::name_of(list.device(i)) == n)
                .ok_or_else(|| VerbsError::NoDevice {
                    wanted: wanted.clone(),
                    reason: format!("present: {}", list.names().join(", ")),
                })?,
        };
        let dev = list.device(index);
        let dev_name = DeviceList::name_of(dev);
        // SAFETY: `dev` is an entry of the live device list.
        let ctx = non_null("ibv_open_device", unsafe { ibv_open_device(dev) })?;
        let mut me = Self {
            ctx,
            name: dev_name,
            pds: Slab::default(),
            mrs: Slab::default(),
            cqs: Slab::default(),
            srqs: Slab::default(),
            qps: Slab::default(),
            ahs: Slab::default(),
            send_wrs: Vec::new(),
            send_sges: Vec::new(),
            recv_wrs: Vec::new(),
            recv_sges: Vec::new(),
            wcs: Vec::new(),
        };
        me.grow_send(16);
        me.grow_recv(64);
        me.wcs = vec![ibv_wc::default(); 64];
        Ok(me)
    }

    /// (Re)allocates the send arrays for `n` requests, linked.
    fn grow_send(&mut self, n: usize) {
        let empty = || ibv_send_wr {
            wr_id: 0,
            next: ptr::null_mut(),
            sg_list: ptr::null_mut(),
            num_sge: 0,
            opcode: IBV_WR_SEND,
            send_flags: 0,
            imm_data: 0,
            wr: send_wr_wr {
                atomic: atomic_t {
                    remote_addr: 0,
                    compare_add: 0,
                    swap: 0,
                    rkey: 0,
                },
            },
            xrc_remote_srqn: 0,
            bind_mw_or_tso: [0; 6],
        };
        (self.send_wrs, self.send_sges) = linked(n, empty, |w, next, sg| {
            w.next = next;
            w.sg_list = sg;
        });
    }

    /// (Re)allocates the receive arrays for `n` requests, linked.
    fn grow_recv(&mut self, n: usize) {
        let empty = || ibv_recv_wr {
            wr_id: 0,
            next: ptr::null_mut(),
            sg_list: ptr::null_mut(),
            num_sge: 0,
        };
        (self.recv_wrs, self.recv_sges) = linked(n, empty, |w, next, sg| {
            w.next = next;
            w.sg_list = sg;
        });
    }

    fn ops(&self) -> &ibv_context_ops {
        // SAFETY: `ctx` is the live context from `ibv_open_device` (closed only in `Drop`);
        // `ops` is its embedded function table, which the provider filled in at open.
        unsafe { &(*self.ctx).ops }
    }

    /// Fills the first `wrs.len()` entries of the pre-linked receive array from `wrs`; returns
    /// how many.
    fn fill_recv(&mut self, wrs: &[RecvWr]) -> usize {
        if wrs.len() > self.recv_wrs.len() {
            self.grow_recv(wrs.len().next_power_of_two());
        }
        for ((c, sges), wr) in self
            .recv_wrs
            .iter_mut()
            .zip(self.recv_sges.iter_mut())
            .zip(wrs)
        {
            c.wr_id = wr.wr_id;
            let list = wr.sg.as_slice();
            c.num_sge = list.len() as c_int;
            for (d, s) in sges.iter_mut().zip(list) {
                *d = ibv_sge {
                    addr: s.addr,
                    length: s.length,
                    lkey: s.lkey,
                };
            }
        }
        wrs.len()
    }

    fn post_recv_chain(
        &mut self,
        n: usize,
        post: impl FnOnce(&ibv_context_ops, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int,
    ) -> Result<(), PostError> {
        if n == 0 {
            return Ok(());
        }
        let base = self.recv_wrs.as_mut_ptr();
        let Some(last) = self.recv_wrs.get_mut(n - 1) else {
            return Err(PostError {
                index: 0,
                errno: EINVAL,
            });
        };
        let saved = last.next;
        last.next = ptr::null_mut();
        let mut bad: *mut ibv_recv_wr = ptr::null_mut();
        let ret = post(self.ops(), base, &mut bad);
        if let Some(last) = self.recv_wrs.get_mut(n - 1) {
            last.next = saved;
        }
        if ret == 0 {
            return Ok(());
        }
        let index = if bad.is_null() {
            0
        } else {
            (bad as usize - base as usize) / std::mem::size_of::<ibv_recv_wr>()
        };
        Err(PostError {
            index,
            errno: ret.abs(),
        })
    }
}

impl Drop for IbvDevice {
    fn drop(&mut self) {
        // Destroy in dependency order: QPs (stop all DMA) before AHs, SRQs and CQs, memory
        // regions (then the buffers may go) before PDs, the context last. Errors are ignored:
        // nothing better can be done while dropping.
        // SAFETY: every pointer was returned by the matching create call on this context and
        // is destroyed exactly once (the tables are emptied as we go).
        unsafe {
            for k in self.qps.keys() {
                if let Some(p) = self.qps.remove(k) {
                    ibv_destroy_qp(p);
                }
            }
            for k in self.ahs.keys() {
                if let Some(p) = self.ahs.remove(k) {
                    ibv_destroy_ah(p);
                }
            }
            for k in self.srqs.keys() {
                if let Some(p) = self.srqs.remove(k) {
                    ibv_destroy_srq(p);
                }
            }
            for k in self.cqs.keys() {
                if let Some(p) = self.cqs.remove(k) {
                    ibv_destroy_cq(p);
                }
            }
            for k in self.mrs.keys() {
                if let Some((p, _mem)) = self.mrs.remove(k) {
                    ibv_dereg_mr(p);
                }
            }
            for k in self.pds.keys() {
                if let Some(p) = self.pds.remove(k) {
                    ibv_dealloc_pd(p);
                }
            }
            ibv_close_device(self.ctx);
        }
    }
}

fn einval(op: &'static str) -> VerbsError {
    VerbsError::errno(op, EINVAL)
}

fn to_c_av(a: &AhAttr) -> ibv_ah_attr {
    let mut c = ibv_ah_attr {
        dlid: a.dlid,
        sl: a.sl,
        src_path_bits: a.src_path_bits,
        port_num: a.port_num,
        ..ibv_ah_attr::default()
    };
    if let Some(g) = a.grh {
        c.is_global = 1;
        c.grh = ibv_global_route {
            dgid: ibv_gid { raw: g.dgid },
            flow_label: g.flow_label,
            sgid_index: g.sgid_index,
            hop_limit: g.hop_limit,
            traffic_class: g.traffic_class,
        };
    }
    c
}

impl VerbsDevice for IbvDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn query_device(&mut self) -> Result<DeviceAttr, VerbsError> {
        // SAFETY: `ibv_device_attr` is plain integers; all-zero is a valid value.
        let mut a: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: live context, valid out pointer.
        check("ibv_query_device", unsafe {
            ibv_query_device(self.ctx, &mut a)
        })?;
        let u = |v: c_int| u32::try_from(v).unwrap_or(0);
        Ok(DeviceAttr {
            phys_port_cnt: a.phys_port_cnt,
            max_qp: u(a.max_qp),
            max_qp_wr: u(a.max_qp_wr),
            max_sge: u(a.max_sge),
            max_cqe: u(a.max_cqe),
            max_srq_wr: u(a.max_srq_wr),
            max_srq_sge: u(a.max_srq_sge),
            max_qp_rd_atom: u(a.max_qp_rd_atom),
            max_mr_size: a.max_mr_size,
        })
    }

    fn query_port(&mut self, port: u8) -> Result<PortAttr, VerbsError> {
        let mut a = ibv_port_attr::default();
        // SAFETY: live context; `a` is a zeroed full `ibv_port_attr`, larger than the legacy
        // prefix the exported symbol fills (what the header's inline wrapper passes too).
        check("ibv_query_port", unsafe {
            ibv_query_port(self.ctx, port, &mut a)
        })?;
        let mtu = |v| Mtu::from_raw(v).unwrap_or(Mtu::M256);
        Ok(PortAttr {
            state: PortState::from_raw(a.state),
            max_mtu: mtu(a.max_mtu),
            active_mtu: mtu(a.active_mtu),
            lid: a.lid,
            gid_tbl_len: u32::try_from(a.gid_tbl_len).unwrap_or(0),
            max_msg_sz: a.max_msg_sz,
            link_layer: if a.link_layer == IBV_LINK_LAYER_ETHERNET {
                LinkLayer::Ethernet
            } else {
                LinkLayer::Infiniband
            },
        })
    }

    fn query_gid(&mut self, port: u8, index: u8) -> Result<Gid, VerbsError> {
        let mut g = ibv_gid::default();
        // SAFETY: live context, valid out pointer.
        check("ibv_query_gid", unsafe {
            ibv_query_gid(self.ctx, port, c_int::from(index), &mut g)
        })?;
        Ok(g.raw)
    }

    fn alloc_pd(&mut self) -> Result<Pd, VerbsError> {
        // SAFETY: live context.
        let p = non_null("ibv_alloc_pd", unsafe { ibv_alloc_pd(self.ctx) })?;
        Ok(Pd(self.pds.insert(p)))
    }

    fn dealloc_pd(&mut self, pd: Pd) -> Result<(), VerbsError> {
        let p = *self.pds.get(pd.0).ok_or(einval("ibv_dealloc_pd"))?;
        // SAFETY: `p` is a live PD of this context.
        check("ibv_dealloc_pd", unsafe { ibv_dealloc_pd(p) })?;
        self.pds.remove(pd.0);
        Ok(())
    }

    fn reg_mr(&mut self, pd: Pd, buf: &DmaBuf, access: Access) -> Result<Mr, VerbsError> {
        let p = *self.pds.get(pd.0).ok_or(einval("ibv_reg_mr"))?;
        let mem = buf.device_mem();
        // SAFETY: the range is the whole live allocation of `buf`; `mem` (kept in the table
        // until deregistration) keeps it allocated for as long as the NIC may access it.
        let mr = non_null("ibv_reg_mr", unsafe {
            ibv_reg_mr(p, mem.addr() as *mut c_void, mem.len(), access.0 as c_int)
        })?;
        // SAFETY: `mr` is the live region just returned.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        let (addr, len) = (mem.addr(), mem.len());
        let h = self.mrs.insert((mr, mem));
        Ok(Mr {
            handle: MrHandle(h),
            lkey,
            rkey,
            addr,
            len,
        })
    }

    fn dereg_mr(&mut self, mr: MrHandle) -> Result<(), VerbsError> {
        let (p, _) = self.mrs.get(mr.0).ok_or(einval("ibv_dereg_mr"))?;
        // SAFETY: `p` is a live region of this context.
        check("ibv_dereg_mr", unsafe { ibv_dereg_mr(*p) })?;
        self.mrs.remove(mr.0);
        Ok(())
    }

    fn create_cq(&mut self, cqe: u32) -> Result<(Cq, u32), VerbsError> {
        let n = c_int::try_from(cqe).map_err(|_| einval("ibv_create_cq"))?;
        // SAFETY: live context; no completion channel, no user context.
        let cq = non_null("ibv_create_cq", unsafe {
            ibv_create_cq(self.ctx, n, ptr::null_mut(), ptr::null_mut(), 0)
        })?;
        // SAFETY: `cq` is the live CQ just created; `cqe` holds the granted capacity.
        let cap = unsafe { (*cq).cqe };
        Ok((Cq(self.cqs.insert(cq)), u32::try_from(cap).unwrap_or(cqe)))
    }

    fn destroy_cq(&mut self, cq: Cq) -> Result<(), VerbsError> {
        let p = *self.cqs.get(cq.0).ok_or(einval("ibv_destroy_cq"))?;
        // SAFETY: live CQ of this context.
        check("ibv_destroy_cq", unsafe { ibv_destroy_cq(p) })?;
        self.cqs.remove(cq.0);
        Ok(())
    }

    fn create_srq(&mut self, pd: Pd, max_wr: u32, max_sge: u32) -> Result<Srq, VerbsError> {
        let p = *self.pds.get(pd.0).ok_or(einval("ibv_create_srq"))?;
        let mut a = ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: ibv_srq_attr {
                max_wr,
                max_sge,
                srq_limit: 0,
            },
        };
        // SAFETY: live PD; valid attribute struct.
        let s = non_null("ibv_create_srq", unsafe { ibv_create_srq(p, &mut a) })?;
        Ok(Srq(self.srqs.insert(s)))
    }

    fn destroy_srq(&mut self, srq: Srq) -> Result<(), VerbsError> {
        let p = *self.srqs.get(srq.0).ok_or(einval("ibv_destroy_srq"))?;
        // SAFETY: live SRQ of this context.
        check("ibv_destroy_srq", unsafe { ibv_destroy_srq(p) })?;
        self.srqs.remove(srq.0);
        Ok(())
    }

    fn create_qp(&mut self, pd: Pd, init: &QpInit) -> Result<QpInfo, VerbsError> {
        const OP: &str = "ibv_create_qp";
        let p = *self.pds.get(pd.0).ok_or(einval(OP))?;
        let scq = *self.cqs.get(init.send_cq.0).ok_or(einval(OP))?;
        let rcq = *self.cqs.get(init.recv_cq.0).ok_or(einval(OP))?;
        let srq = match init.srq {
            Some(s) => *self.srqs.get(s.0).ok_or(einval(OP))?,
            None => ptr::null_mut(),
        };
        let c = init.caps;
        let mut a = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: scq,
            recv_cq: rcq,
            srq,
            cap: ibv_qp_cap {
                max_send_wr: c.max_send_wr,
                max_recv_wr: c.max_recv_wr,
                max_send_sge: c.max_send_sge,
                max_recv_sge: c.max_recv_sge,
                max_inline_data: c.max_inline_data,
            },
            qp_type: match init.qp_type {
                QpType::Rc => IBV_QPT_RC,
                QpType::Ud => IBV_QPT_UD,
            },
            sq_sig_all: c_int::from(init.sq_sig_all),
        };
        // SAFETY: live PD and CQs (and SRQ) of this context; valid attribute struct, whose
        // `cap` the call updates with the granted capacities.
        let qp = non_null(OP, unsafe { ibv_create_qp(p, &mut a) })?;
        // SAFETY: `qp` is the live QP just created.
        let qp_num = unsafe { (*qp).qp_num };
        Ok(QpInfo {
            qp: Qp(self.qps.insert(qp)),
            qp_num,
            caps: QpCaps {
                max_send_wr: a.cap.max_send_wr,
                max_recv_wr: a.cap.max_recv_wr,
                max_send_sge: a.cap.max_send_sge,
                max_recv_sge: a.cap.max_recv_sge,
                max_inline_data: a.cap.max_inline_data,
            },
        })
    }

    fn modify_qp(&mut self, qp: Qp, attr: &QpAttr, mask: AttrMask) -> Result<(), VerbsError> {
        let p = *self.qps.get(qp.0).ok_or(einval("ibv_modify_qp"))?;
        let mut a = ibv_qp_attr {
            qp_state: attr.state.raw(),
            cur_qp_state: attr.cur_state.raw(),
            path_mtu: attr.path_mtu as u32,
            qkey: attr.qkey,
            rq_psn: attr.rq_psn,
            sq_psn: attr.sq_psn,
            dest_qp_num: attr.dest_qp_num,
            qp_access_flags: attr.access.0,
            ah_attr: to_c_av(&attr.ah),
            pkey_index: attr.pkey_index,
            max_rd_atomic: attr.max_rd_atomic,
            max_dest_rd_atomic: attr.max_dest_rd_atomic,
            min_rnr_timer: attr.min_rnr_timer,
            port_num: attr.port_num,
            timeout: attr.timeout,
            retry_cnt: attr.retry_cnt,
            rnr_retry: attr.rnr_retry,
            ..ibv_qp_attr::default()
        };
        // SAFETY: live QP; valid attribute struct; the mask names which fields count.
        check("ibv_modify_qp", unsafe {
            ibv_modify_qp(p, &mut a, mask.0 as c_int)
        })
    }

    fn query_qp_state(&mut self, qp: Qp) -> Result<QpState, VerbsError> {
        let p = *self.qps.get(qp.0).ok_or(einval("ibv_query_qp"))?;
        let mut a = ibv_qp_attr::default();
        let mut init = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: ptr::null_mut(),
            recv_cq: ptr::null_mut(),
            srq: ptr::null_mut(),
            cap: ibv_qp_cap::default(),
            qp_type: 0,
            sq_sig_all: 0,
        };
        // SAFETY: live QP; valid out structs.
        check("ibv_query_qp", unsafe {
            ibv_query_qp(p, &mut a, IBV_QP_STATE, &mut init)
        })?;
        QpState::from_raw(a.qp_state).ok_or(VerbsError::errno("ibv_query_qp", libc::EIO))
    }

    fn destroy_qp(&mut self, qp: Qp) -> Result<(), VerbsError> {
        let p = *self.qps.get(qp.0).ok_or(einval("ibv_destroy_qp"))?;
        // SAFETY: live QP of this context.
        check("ibv_destroy_qp", unsafe { ibv_destroy_qp(p) })?;
        self.qps.remove(qp.0);
        Ok(())
    }

    fn create_ah(&mut self, pd: Pd, attr: &AhAttr) -> Result<Ah, VerbsError> {
        let p = *self.pds.get(pd.0).ok_or(einval("ibv_create_ah"))?;
        let mut a = to_c_av(attr);
        // SAFETY: live PD; valid attribute struct.
        let ah = non_null("ibv_create_ah", unsafe { ibv_create_ah(p, &mut a) })?;
        Ok(Ah(self.ahs.insert(ah)))
    }

    fn destroy_ah(&mut self, ah: Ah) -> Result<(), VerbsError> {
        let p = *self.ahs.get(ah.0).ok_or(einval("ibv_destroy_ah"))?;
        // SAFETY: live AH of this context.
        check("ibv_destroy_ah", unsafe { ibv_destroy_ah(p) })?;
        self.ahs.remove(ah.0);
        Ok(())
    }

    fn post_send(&mut self, qp: Qp, wrs: &[SendWr<'_>]) -> Result<(), PostError> {
        let Some(&qp) = self.qps.get(qp.0) else {
            return Err(PostError {
                index: 0,
                errno: EINVAL,
            });
        };
        if wrs.len() > self.send_wrs.len() {
            self.grow_send(wrs.len().next_power_of_two());
        }
        // Fill the persistent entries; a request naming an unknown AH ends the list there.
        let mut n = 0;
        let mut early: Option<PostError> = None;
        for (i, wr) in wrs.iter().enumerate() {
            let ah = match wr.ud {
                Some(u) => match self.ahs.get(u.ah.0) {
                    Some(&p) => Some((p, u.remote_qpn, u.remote_qkey)),
                    None => {
                        early = Some(PostError {
                            index: i,
                            errno: EINVAL,
                        });
                        break;
                    }
                },
                None => None,
            };
            let (Some(c), Some(sges)) = (self.send_wrs.get_mut(i), self.send_sges.get_mut(i))
            else {
                break;
            };
            c.wr_id = wr.wr_id;
            c.send_flags = if wr.signaled { IBV_SEND_SIGNALED } else { 0 };
            c.imm_data = 0;
            let (opcode, imm, remote) = match wr.op {
                SendOp::Send => (IBV_WR_SEND, None, None),
                SendOp::SendWithImm(i) => (IBV_WR_SEND_WITH_IMM, Some(i), None),
                SendOp::RdmaWrite { remote_addr, rkey } => {
                    (IBV_WR_RDMA_WRITE, None, Some((remote_addr, rkey)))
                }
                SendOp::RdmaWriteWithImm {
                    remote_addr,
                    rkey,
                    imm,
                } => (
                    IBV_WR_RDMA_WRITE_WITH_IMM,
                    Some(imm),
                    Some((remote_addr, rkey)),
                ),
                SendOp::RdmaRead { remote_addr, rkey } => {
                    (IBV_WR_RDMA_READ, None, Some((remote_addr, rkey)))
                }
            };
            c.opcode = opcode;
            if let Some(i) = imm {
                c.imm_data = i.to_be();
            }
            if let Some((ah, qpn, qkey)) = ah {
                c.wr.ud = ud_t {
                    ah,
                    remote_qpn: qpn,
                    remote_qkey: qkey,
                };
            } else if let Some((remote_addr, rkey)) = remote {
                c.wr.rdma = rdma_t { remote_addr, rkey };
            }
            match wr.payload {
                Payload::Sg(list) => {
                    let l = list.as_slice();
                    c.num_sge = l.len() as c_int;
                    for (d, s) in sges.iter_mut().zip(l) {
                        *d = ibv_sge {
                            addr: s.addr,
                            length: s.length,
                            lkey: s.lkey,
                        };
                    }
                }
                Payload::Inline(a, b) => {
                    // Inline data is read by the provider during the post, from these
                    // borrowed slices (no registration needed, lkey unused).
                    c.send_flags |= IBV_SEND_INLINE;
                    let mut k = 0;
                    for part in [a, b] {
                        if part.is_empty() {
                            continue;
                        }
                        if let Some(d) = sges.get_mut(k) {
                            *d = ibv_sge {
                                addr: part.as_ptr() as u64,
                                length: part.len() as u32,
                                lkey: 0,
                            };
                            k += 1;
                        }
                    }
                    c.num_sge = k as c_int;
                }
            }
            n = i + 1;
        }
        if n == 0 {
            return early.map_or(Ok(()), Err);
        }
        let Some(post) = self.ops().post_send else {
            return Err(PostError {
                index: 0,
                errno: EOPNOTSUPP,
            });
        };
        let base = self.send_wrs.as_mut_ptr();
        let Some(last) = self.send_wrs.get_mut(n - 1) else {
            return Err(PostError {
                index: 0,
                errno: EINVAL,
            });
        };
        let saved = last.next;
        last.next = ptr::null_mut(); // cut the pre-linked chain after entry n - 1
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: `qp` is a live QP of this context; `base..base+n` are initialized, linked
        // requests whose SGE arrays live in `send_sges` and whose inline SGEs point into
        // slices borrowed for the duration of this call; the provider reads them only during
        // the call (inline data is copied, SGE addresses are checked by the NIC against the
        // registered regions).
        let ret = unsafe { post(qp, base, &mut bad) };
        if let Some(last) = self.send_wrs.get_mut(n - 1) {
            last.next = saved; // restore the chain
        }
        if ret != 0 {
            let index = if bad.is_null() {
                0
            } else {
                (bad as usize - base as usize) / std::mem::size_of::<ibv_send_wr>()
            };
            return Err(PostError {
                index,
                errno: ret.abs(),
            });
        }
        early.map_or(Ok(()), Err)
    }

    fn post_recv(&mut self, qp: Qp, wrs: &[RecvWr]) -> Result<(), PostError> {
        let Some(&qp) = self.qps.get(qp.0) else {
            return Err(PostError {
                index: 0,
                errno: EINVAL,
            });
        };
        let n = self.fill_recv(wrs);
        self.post_recv_chain(n, |ops, first, bad| match ops.post_recv {
            // SAFETY: live QP; `first` heads `n` initialized, linked requests (chain cut after
            // the last) whose SGEs name registered memory.
            Some(f) => unsafe { f(qp, first, bad) },
            None => EOPNOTSUPP,
        })
    }

    fn post_srq_recv(&mut self, srq: Srq, wrs: &[RecvWr]) -> Result<(), PostError> {
        let Some(&srq) = self.srqs.get(srq.0) else {
            return Err(PostError {
                index: 0,
                errno: EINVAL,
            });
        };
        let n = self.fill_recv(wrs);
        self.post_recv_chain(n, |ops, first, bad| match ops.post_srq_recv {
            // SAFETY: live SRQ; as in `post_recv`.
            Some(f) => unsafe { f(srq, first, bad) },
            None => EOPNOTSUPP,
        })
    }

    fn poll_cq(&mut self, cq: Cq, out: &mut [Wc]) -> Result<usize, VerbsError> {
        let Some(&cq) = self.cqs.get(cq.0) else {
            return Err(einval("ibv_poll_cq"));
        };
        if out.len() > self.wcs.len() {
            self.wcs = vec![ibv_wc::default(); out.len().next_power_of_two()];
        }
        let Some(poll) = self.ops().poll_cq else {
            return Err(VerbsError::errno("ibv_poll_cq", EOPNOTSUPP));
        };
        let want = out.len().min(self.wcs.len());
        // SAFETY: live CQ; `wcs` has room for `want` entries.
        let ret = unsafe { poll(cq, want as c_int, self.wcs.as_mut_ptr()) };
        if ret < 0 {
            return Err(VerbsError::errno("ibv_poll_cq", ret.abs()));
        }
        let n = usize::try_from(ret).unwrap_or(0).min(want);
        for (o, c) in out.iter_mut().zip(&self.wcs).take(n) {
            *o = Wc {
                wr_id: c.wr_id,
                status: WcStatus::from_raw(c.status),
                opcode: WcOpcode::from_raw(c.opcode),
                byte_len: c.byte_len,
                imm: (c.wc_flags & IBV_WC_WITH_IMM != 0).then(|| u32::from_be(c.imm_data)),
                qp_num: c.qp_num,
                src_qp: c.src_qp,
                slid: c.slid,
                grh: c.wc_flags & IBV_WC_GRH != 0,
                vendor_err: c.vendor_err,
            };
        }
        Ok(n)
    }

    fn idle(&mut self, timeout: Option<Duration>) {
        // No completion channel: callers that want to sleep get a short nap; busy-pollers never
        // call this.
        let t = timeout.unwrap_or(Duration::from_micros(20));
        std::thread::sleep(t.min(Duration::from_micros(20)));
    }
}
