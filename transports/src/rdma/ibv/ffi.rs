//! Hand-written declarations of the legacy libibverbs ABI (`IBVERBS_1.1`, stable since
//! rdma-core's first release): the ~20 exported functions the transports call and the structs
//! they exchange, laid out as `<infiniband/verbs.h>` lays them out on 64-bit Linux. A unit test
//! (`layout_matches_the_system_header`) compiles a C program against the installed header and
//! compares every size and offset used here, so a mismatch fails CI instead of corrupting
//! memory.
//!
//! The datapath verbs `ibv_post_send`, `ibv_post_recv`, `ibv_post_srq_recv` and `ibv_poll_cq`
//! are `static inline` in the header: they call the provider through `ctx->ops`. They are not
//! exported symbols, so [`ibv_context_ops`] declares the function pointer table and the device
//! calls through it, exactly as the inline functions do.
#![allow(non_camel_case_types, unsafe_code, missing_docs, dead_code)]

use libc::{c_char, c_int, c_uint, c_void, size_t};

/// Opaque `struct ibv_device`.
#[repr(C)]
pub struct ibv_device {
    _private: [u8; 0],
}

pub type PostSendFn =
    unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> c_int;
pub type PostRecvFn =
    unsafe extern "C" fn(*mut ibv_qp, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int;
pub type PostSrqRecvFn =
    unsafe extern "C" fn(*mut ibv_srq, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int;
pub type PollCqFn = unsafe extern "C" fn(*mut ibv_cq, c_int, *mut ibv_wc) -> c_int;

type Slot = Option<unsafe extern "C" fn()>;

/// `struct ibv_context_ops`: 32 function pointers; only the datapath ones are typed.
#[repr(C)]
pub struct ibv_context_ops {
    _compat_0_to_10: [Slot; 11],
    pub poll_cq: Option<PollCqFn>,
    _compat_12_to_19: [Slot; 8],
    pub post_srq_recv: Option<PostSrqRecvFn>,
    _compat_21_to_24: [Slot; 4],
    pub post_send: Option<PostSendFn>,
    pub post_recv: Option<PostRecvFn>,
    _compat_27_to_31: [Slot; 5],
}

/// The leading fields of `struct ibv_context` (only ever used through a pointer from
/// `ibv_open_device`).
#[repr(C)]
pub struct ibv_context {
    pub device: *mut ibv_device,
    pub ops: ibv_context_ops,
    pub cmd_fd: c_int,
    pub async_fd: c_int,
    pub num_comp_vectors: c_int,
}

/// Leading fields of `struct ibv_pd`.
#[repr(C)]
pub struct ibv_pd {
    pub context: *mut ibv_context,
    pub handle: u32,
}

/// `struct ibv_mr`.
#[repr(C)]
pub struct ibv_mr {
    pub context: *mut ibv_context,
    pub pd: *mut ibv_pd,
    pub addr: *mut c_void,
    pub length: size_t,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}

/// Leading fields of `struct ibv_cq`.
#[repr(C)]
pub struct ibv_cq {
    pub context: *mut ibv_context,
    pub channel: *mut c_void,
    pub cq_context: *mut c_void,
    pub handle: u32,
    pub cqe: c_int,
}

/// Leading fields of `struct ibv_srq`.
#[repr(C)]
pub struct ibv_srq {
    pub context: *mut ibv_context,
    pub srq_context: *mut c_void,
    pub pd: *mut ibv_pd,
    pub handle: u32,
}

/// Leading fields of `struct ibv_qp`.
#[repr(C)]
pub struct ibv_qp {
    pub context: *mut ibv_context,
    pub qp_context: *mut c_void,
    pub pd: *mut ibv_pd,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub handle: u32,
    pub qp_num: u32,
    pub state: c_uint,
    pub qp_type: c_uint,
}

/// Leading fields of `struct ibv_ah`.
#[repr(C)]
pub struct ibv_ah {
    pub context: *mut ibv_context,
    pub pd: *mut ibv_pd,
    pub handle: u32,
}

/// `union ibv_gid` (16 bytes, 8-byte aligned because of its `global` view).
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct ibv_gid {
    pub raw: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_global_route {
    pub dgid: ibv_gid,
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_ah_attr {
    pub grh: ibv_global_route,
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: u8,
    pub port_num: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_qp_cap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

#[repr(C)]
pub struct ibv_qp_init_attr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub cap: ibv_qp_cap,
    pub qp_type: c_uint,
    pub sq_sig_all: c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_qp_attr {
    pub qp_state: c_uint,
    pub cur_qp_state: c_uint,
    pub path_mtu: c_uint,
    pub path_mig_state: c_uint,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: c_uint,
    pub cap: ibv_qp_cap,
    pub ah_attr: ibv_ah_attr,
    pub alt_ah_attr: ibv_ah_attr,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_srq_attr {
    pub max_wr: u32,
    pub max_sge: u32,
    pub srq_limit: u32,
}

#[repr(C)]
pub struct ibv_srq_init_attr {
    pub srq_context: *mut c_void,
    pub attr: ibv_srq_attr,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_port_attr {
    pub state: c_uint,
    pub max_mtu: c_uint,
    pub active_mtu: c_uint,
    pub gid_tbl_len: c_int,
    pub port_cap_flags: u32,
    pub max_msg_sz: u32,
    pub bad_pkey_cntr: u32,
    pub qkey_viol_cntr: u32,
    pub pkey_tbl_len: u16,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub max_vl_num: u8,
    pub sm_sl: u8,
    pub subnet_timeout: u8,
    pub init_type_reply: u8,
    pub active_width: u8,
    pub active_speed: u8,
    pub phys_state: u8,
    pub link_layer: u8,
    pub flags: u8,
    pub port_cap_flags2: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ibv_device_attr {
    pub fw_ver: [c_char; 64],
    pub node_guid: u64,
    pub sys_image_guid: u64,
    pub max_mr_size: u64,
    pub page_size_cap: u64,
    pub vendor_id: u32,
    pub vendor_part_id: u32,
    pub hw_ver: u32,
    pub max_qp: c_int,
    pub max_qp_wr: c_int,
    pub device_cap_flags: c_uint,
    pub max_sge: c_int,
    pub max_sge_rd: c_int,
    pub max_cq: c_int,
    pub max_cqe: c_int,
    pub max_mr: c_int,
    pub max_pd: c_int,
    pub max_qp_rd_atom: c_int,
    pub max_ee_rd_atom: c_int,
    pub max_res_rd_atom: c_int,
    pub max_qp_init_rd_atom: c_int,
    pub max_ee_init_rd_atom: c_int,
    pub atomic_cap: c_uint,
    pub max_ee: c_int,
    pub max_rdd: c_int,
    pub max_mw: c_int,
    pub max_raw_ipv6_qp: c_int,
    pub max_raw_ethy_qp: c_int,
    pub max_mcast_grp: c_int,
    pub max_mcast_qp_attach: c_int,
    pub max_total_mcast_qp_attach: c_int,
    pub max_ah: c_int,
    pub max_fmr: c_int,
    pub max_map_per_fmr: c_int,
    pub max_srq: c_int,
    pub max_srq_wr: c_int,
    pub max_srq_sge: c_int,
    pub max_pkeys: u16,
    pub local_ca_ack_delay: u8,
    pub phys_port_cnt: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct rdma_t {
    pub remote_addr: u64,
    pub rkey: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct atomic_t {
    pub remote_addr: u64,
    pub compare_add: u64,
    pub swap: u64,
    pub rkey: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ud_t {
    pub ah: *mut ibv_ah,
    pub remote_qpn: u32,
    pub remote_qkey: u32,
}

/// The `wr` union of `struct ibv_send_wr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union send_wr_wr {
    pub rdma: rdma_t,
    pub atomic: atomic_t,
    pub ud: ud_t,
}

/// `struct ibv_send_wr`. The trailing unions (XRC, memory-window bind, TSO) are unused here
/// and kept as opaque, zeroed storage of the right size and alignment.
#[repr(C)]
pub struct ibv_send_wr {
    pub wr_id: u64,
    pub next: *mut ibv_send_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
    pub opcode: c_uint,
    pub send_flags: c_uint,
    /// Immediate data, network byte order.
    pub imm_data: u32,
    pub wr: send_wr_wr,
    pub xrc_remote_srqn: u32,
    pub bind_mw_or_tso: [u64; 6],
}

/// `struct ibv_recv_wr`.
#[repr(C)]
pub struct ibv_recv_wr {
    pub wr_id: u64,
    pub next: *mut ibv_recv_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
}

/// `struct ibv_wc`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ibv_wc {
    pub wr_id: u64,
    pub status: c_uint,
    pub opcode: c_uint,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// Immediate data, network byte order (valid with `IBV_WC_WITH_IMM`).
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: c_uint,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

pub const IBV_QPT_RC: c_uint = 2;
pub const IBV_QPT_UD: c_uint = 4;

pub const IBV_WR_RDMA_WRITE: c_uint = 0;
pub const IBV_WR_RDMA_WRITE_WITH_IMM: c_uint = 1;
pub const IBV_WR_SEND: c_uint = 2;
pub const IBV_WR_SEND_WITH_IMM: c_uint = 3;
pub const IBV_WR_RDMA_READ: c_uint = 4;

pub const IBV_SEND_SIGNALED: c_uint = 1 << 1;
pub const IBV_SEND_INLINE: c_uint = 1 << 3;

pub const IBV_WC_GRH: c_uint = 1 << 0;
pub const IBV_WC_WITH_IMM: c_uint = 1 << 1;

pub const IBV_LINK_LAYER_UNSPECIFIED: u8 = 0;
pub const IBV_LINK_LAYER_INFINIBAND: u8 = 1;
pub const IBV_LINK_LAYER_ETHERNET: u8 = 2;

pub const IBV_QP_STATE: c_int = 1;

#[link(name = "ibverbs")]
extern "C" {
    pub fn ibv_get_device_list(num_devices: *mut c_int) -> *mut *mut ibv_device;
    pub fn ibv_free_device_list(list: *mut *mut ibv_device);
    pub fn ibv_get_device_name(device: *mut ibv_device) -> *const c_char;
    pub fn ibv_open_device(device: *mut ibv_device) -> *mut ibv_context;
    pub fn ibv_close_device(context: *mut ibv_context) -> c_int;
    pub fn ibv_query_device(context: *mut ibv_context, attr: *mut ibv_device_attr) -> c_int;
    /// The exported `ibv_query_port` (the header's macro wraps it); it fills the legacy
    /// prefix of `struct ibv_port_attr`, which is every field declared here but the last.
    pub fn ibv_query_port(context: *mut ibv_context, port: u8, attr: *mut ibv_port_attr) -> c_int;
    pub fn ibv_query_gid(
        context: *mut ibv_context,
        port: u8,
        index: c_int,
        gid: *mut ibv_gid,
    ) -> c_int;
    pub fn ibv_alloc_pd(context: *mut ibv_context) -> *mut ibv_pd;
    pub fn ibv_dealloc_pd(pd: *mut ibv_pd) -> c_int;
    pub fn ibv_reg_mr(
        pd: *mut ibv_pd,
        addr: *mut c_void,
        length: size_t,
        access: c_int,
    ) -> *mut ibv_mr;
    pub fn ibv_dereg_mr(mr: *mut ibv_mr) -> c_int;
    pub fn ibv_create_cq(
        context: *mut ibv_context,
        cqe: c_int,
        cq_context: *mut c_void,
        channel: *mut c_void,
        comp_vector: c_int,
    ) -> *mut ibv_cq;
    pub fn ibv_destroy_cq(cq: *mut ibv_cq) -> c_int;
    pub fn ibv_create_srq(pd: *mut ibv_pd, attr: *mut ibv_srq_init_attr) -> *mut ibv_srq;
    pub fn ibv_destroy_srq(srq: *mut ibv_srq) -> c_int;
    pub fn ibv_create_qp(pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> *mut ibv_qp;
    pub fn ibv_modify_qp(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, mask: c_int) -> c_int;
    pub fn ibv_query_qp(
        qp: *mut ibv_qp,
        attr: *mut ibv_qp_attr,
        mask: c_int,
        init_attr: *mut ibv_qp_init_attr,
    ) -> c_int;
    pub fn ibv_destroy_qp(qp: *mut ibv_qp) -> c_int;
    pub fn ibv_create_ah(pd: *mut ibv_pd, attr: *mut ibv_ah_attr) -> *mut ibv_ah;
    pub fn ibv_destroy_ah(ah: *mut ibv_ah) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// Compiles a C program against the installed `<infiniband/verbs.h>` that prints the size
    /// and field offsets of every struct declared above, and compares them with Rust's.
    #[test]
    fn layout_matches_the_system_header() {
        let header = std::path::Path::new("/usr/include/infiniband/verbs.h");
        assert!(
            header.exists(),
            "{} is missing: install libibverbs-dev (ci/test does) to build the rdma feature",
            header.display()
        );
        let checks: Vec<(&str, usize)> = vec![
            ("sizeof(struct ibv_sge)", size_of::<ibv_sge>()),
            ("sizeof(struct ibv_send_wr)", size_of::<ibv_send_wr>()),
            (
                "offsetof(struct ibv_send_wr, next)",
                offset_of!(ibv_send_wr, next),
            ),
            (
                "offsetof(struct ibv_send_wr, sg_list)",
                offset_of!(ibv_send_wr, sg_list),
            ),
            (
                "offsetof(struct ibv_send_wr, num_sge)",
                offset_of!(ibv_send_wr, num_sge),
            ),
            (
                "offsetof(struct ibv_send_wr, opcode)",
                offset_of!(ibv_send_wr, opcode),
            ),
            (
                "offsetof(struct ibv_send_wr, send_flags)",
                offset_of!(ibv_send_wr, send_flags),
            ),
            (
                "offsetof(struct ibv_send_wr, imm_data)",
                offset_of!(ibv_send_wr, imm_data),
            ),
            (
                "offsetof(struct ibv_send_wr, wr)",
                offset_of!(ibv_send_wr, wr),
            ),
            (
                "offsetof(struct ibv_send_wr, wr.ud.remote_qpn)",
                offset_of!(ibv_send_wr, wr) + offset_of!(ud_t, remote_qpn),
            ),
            (
                "offsetof(struct ibv_send_wr, wr.ud.remote_qkey)",
                offset_of!(ibv_send_wr, wr) + offset_of!(ud_t, remote_qkey),
            ),
            (
                "offsetof(struct ibv_send_wr, wr.rdma.rkey)",
                offset_of!(ibv_send_wr, wr) + offset_of!(rdma_t, rkey),
            ),
            (
                "offsetof(struct ibv_send_wr, qp_type)",
                offset_of!(ibv_send_wr, xrc_remote_srqn),
            ),
            ("sizeof(struct ibv_recv_wr)", size_of::<ibv_recv_wr>()),
            (
                "offsetof(struct ibv_recv_wr, num_sge)",
                offset_of!(ibv_recv_wr, num_sge),
            ),
            ("sizeof(struct ibv_wc)", size_of::<ibv_wc>()),
            (
                "offsetof(struct ibv_wc, byte_len)",
                offset_of!(ibv_wc, byte_len),
            ),
            (
                "offsetof(struct ibv_wc, imm_data)",
                offset_of!(ibv_wc, imm_data),
            ),
            (
                "offsetof(struct ibv_wc, qp_num)",
                offset_of!(ibv_wc, qp_num),
            ),
            (
                "offsetof(struct ibv_wc, src_qp)",
                offset_of!(ibv_wc, src_qp),
            ),
            (
                "offsetof(struct ibv_wc, wc_flags)",
                offset_of!(ibv_wc, wc_flags),
            ),
            ("offsetof(struct ibv_wc, slid)", offset_of!(ibv_wc, slid)),
            (
                "offsetof(struct ibv_wc, dlid_path_bits)",
                offset_of!(ibv_wc, dlid_path_bits),
            ),
            ("sizeof(struct ibv_qp_cap)", size_of::<ibv_qp_cap>()),
            (
                "sizeof(struct ibv_qp_init_attr)",
                size_of::<ibv_qp_init_attr>(),
            ),
            (
                "offsetof(struct ibv_qp_init_attr, cap)",
                offset_of!(ibv_qp_init_attr, cap),
            ),
            (
                "offsetof(struct ibv_qp_init_attr, qp_type)",
                offset_of!(ibv_qp_init_attr, qp_type),
            ),
            (
                "offsetof(struct ibv_qp_init_attr, sq_sig_all)",
                offset_of!(ibv_qp_init_attr, sq_sig_all),
            ),
            ("sizeof(struct ibv_qp_attr)", size_of::<ibv_qp_attr>()),
            (
                "offsetof(struct ibv_qp_attr, cap)",
                offset_of!(ibv_qp_attr, cap),
            ),
            (
                "offsetof(struct ibv_qp_attr, ah_attr)",
                offset_of!(ibv_qp_attr, ah_attr),
            ),
            (
                "offsetof(struct ibv_qp_attr, pkey_index)",
                offset_of!(ibv_qp_attr, pkey_index),
            ),
            (
                "offsetof(struct ibv_qp_attr, min_rnr_timer)",
                offset_of!(ibv_qp_attr, min_rnr_timer),
            ),
            (
                "offsetof(struct ibv_qp_attr, rnr_retry)",
                offset_of!(ibv_qp_attr, rnr_retry),
            ),
            (
                "offsetof(struct ibv_qp_attr, rate_limit)",
                offset_of!(ibv_qp_attr, rate_limit),
            ),
            ("sizeof(struct ibv_ah_attr)", size_of::<ibv_ah_attr>()),
            (
                "offsetof(struct ibv_ah_attr, dlid)",
                offset_of!(ibv_ah_attr, dlid),
            ),
            (
                "offsetof(struct ibv_ah_attr, is_global)",
                offset_of!(ibv_ah_attr, is_global),
            ),
            (
                "offsetof(struct ibv_ah_attr, port_num)",
                offset_of!(ibv_ah_attr, port_num),
            ),
            (
                "sizeof(struct ibv_global_route)",
                size_of::<ibv_global_route>(),
            ),
            (
                "offsetof(struct ibv_global_route, sgid_index)",
                offset_of!(ibv_global_route, sgid_index),
            ),
            ("sizeof(union ibv_gid)", size_of::<ibv_gid>()),
            ("sizeof(struct ibv_port_attr)", size_of::<ibv_port_attr>()),
            (
                "offsetof(struct ibv_port_attr, lid)",
                offset_of!(ibv_port_attr, lid),
            ),
            (
                "offsetof(struct ibv_port_attr, link_layer)",
                offset_of!(ibv_port_attr, link_layer),
            ),
            (
                "offsetof(struct ibv_port_attr, max_msg_sz)",
                offset_of!(ibv_port_attr, max_msg_sz),
            ),
            (
                "sizeof(struct ibv_device_attr)",
                size_of::<ibv_device_attr>(),
            ),
            (
                "offsetof(struct ibv_device_attr, max_qp_wr)",
                offset_of!(ibv_device_attr, max_qp_wr),
            ),
            (
                "offsetof(struct ibv_device_attr, max_srq_sge)",
                offset_of!(ibv_device_attr, max_srq_sge),
            ),
            (
                "offsetof(struct ibv_device_attr, phys_port_cnt)",
                offset_of!(ibv_device_attr, phys_port_cnt),
            ),
            (
                "sizeof(struct ibv_srq_init_attr)",
                size_of::<ibv_srq_init_attr>(),
            ),
            (
                "offsetof(struct ibv_srq_init_attr, attr)",
                offset_of!(ibv_srq_init_attr, attr),
            ),
            (
                "offsetof(struct ibv_context, ops)",
                offset_of!(ibv_context, ops),
            ),
            (
                "offsetof(struct ibv_context, cmd_fd)",
                offset_of!(ibv_context, cmd_fd),
            ),
            (
                "offsetof(struct ibv_context, ops.poll_cq)",
                offset_of!(ibv_context, ops) + offset_of!(ibv_context_ops, poll_cq),
            ),
            (
                "offsetof(struct ibv_context, ops.post_srq_recv)",
                offset_of!(ibv_context, ops) + offset_of!(ibv_context_ops, post_srq_recv),
            ),
            (
                "offsetof(struct ibv_context, ops.post_send)",
                offset_of!(ibv_context, ops) + offset_of!(ibv_context_ops, post_send),
            ),
            (
                "offsetof(struct ibv_context, ops.post_recv)",
                offset_of!(ibv_context, ops) + offset_of!(ibv_context_ops, post_recv),
            ),
            (
                "sizeof(struct ibv_context_ops)",
                size_of::<ibv_context_ops>(),
            ),
            (
                "offsetof(struct ibv_qp, qp_num)",
                offset_of!(ibv_qp, qp_num),
            ),
            ("offsetof(struct ibv_qp, state)", offset_of!(ibv_qp, state)),
            ("offsetof(struct ibv_mr, lkey)", offset_of!(ibv_mr, lkey)),
            ("offsetof(struct ibv_mr, rkey)", offset_of!(ibv_mr, rkey)),
            ("offsetof(struct ibv_cq, cqe)", offset_of!(ibv_cq, cqe)),
            ("IBV_QPT_RC", IBV_QPT_RC as usize),
            ("IBV_QPT_UD", IBV_QPT_UD as usize),
            ("IBV_WR_SEND_WITH_IMM", IBV_WR_SEND_WITH_IMM as usize),
            ("IBV_WR_RDMA_READ", IBV_WR_RDMA_READ as usize),
            ("IBV_SEND_SIGNALED", IBV_SEND_SIGNALED as usize),
            ("IBV_SEND_INLINE", IBV_SEND_INLINE as usize),
            ("IBV_WC_WITH_IMM", IBV_WC_WITH_IMM as usize),
            ("IBV_LINK_LAYER_ETHERNET", IBV_LINK_LAYER_ETHERNET as usize),
            (
                "IBV_QP_DEST_QPN",
                crate::rdma::verbs::AttrMask::DEST_QPN.0 as usize,
            ),
            (
                "IBV_QP_MAX_DEST_RD_ATOMIC",
                crate::rdma::verbs::AttrMask::MAX_DEST_RD_ATOMIC.0 as usize,
            ),
            (
                "IBV_QP_SQ_PSN",
                crate::rdma::verbs::AttrMask::SQ_PSN.0 as usize,
            ),
            ("IBV_QP_AV", crate::rdma::verbs::AttrMask::AV.0 as usize),
            (
                "IBV_WC_RNR_RETRY_EXC_ERR",
                crate::rdma::verbs::WcStatus::RnrRetryExcErr.raw() as usize,
            ),
            (
                "IBV_WC_WR_FLUSH_ERR",
                crate::rdma::verbs::WcStatus::WrFlushErr.raw() as usize,
            ),
            (
                "IBV_WC_RETRY_EXC_ERR",
                crate::rdma::verbs::WcStatus::RetryExcErr.raw() as usize,
            ),
            (
                "IBV_WC_REM_ACCESS_ERR",
                crate::rdma::verbs::WcStatus::RemAccessErr.raw() as usize,
            ),
            (
                "IBV_WC_LOC_PROT_ERR",
                crate::rdma::verbs::WcStatus::LocProtErr.raw() as usize,
            ),
            ("IBV_WC_RECV", 128),
            (
                "IBV_QPS_ERR",
                crate::rdma::verbs::QpState::Err.raw() as usize,
            ),
            ("IBV_MTU_4096", crate::rdma::verbs::Mtu::M4096 as usize),
        ];
        let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include <infiniband/verbs.h>\nint main(void) {\n");
        for (expr, _) in &checks {
            c.push_str(&format!("  printf(\"%zu\\n\", (size_t)({expr}));\n"));
        }
        c.push_str("  return 0;\n}\n");
        let dir = std::env::temp_dir().join(format!("ibv-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("layout.c");
        let bin = dir.join("layout");
        std::fs::write(&src, c).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = Command::new(&cc)
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
        assert!(
            out.status.success(),
            "compiling the layout probe failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = Command::new(&bin).output().unwrap();
        let values: Vec<usize> = String::from_utf8_lossy(&run.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(values.len(), checks.len());
        let mismatches: Vec<String> = checks
            .iter()
            .zip(&values)
            .filter(|((_, rust), c)| *rust != **c)
            .map(|((expr, rust), c)| format!("{expr}: C {c}, Rust {rust}"))
            .collect();
        assert!(
            mismatches.is_empty(),
            "layout mismatches:\n{}",
            mismatches.join("\n")
        );
    }
}
