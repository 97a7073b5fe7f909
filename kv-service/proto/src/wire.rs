//! The KV wire format carried inside rpc messages (the byte-level description with every
//! field is in `docs/PROTOCOL.md, Part II`).
//!
//! Each KV operation is one rpc request whose one-byte rpc request type is the operation
//! ([`op`]); the request message is a 16-byte [`ReqHeader`] followed by the key and the
//! value, and the response message is a 16-byte [`RespHeader`] followed by a body whose
//! meaning depends on the operation and the [`Status`]. Integers are little-endian; the
//! header structs have alignment 1, so they are read from any byte offset.
//!
//! Every parser here is total: any input bytes give a value or an error, never a panic
//! (checked by the property tests in `tests/wire_props.rs` and the fuzz targets `kv_*`), and
//! the lints below keep indexing, `unwrap` and `expect` out of this module.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use bytemuck::{Pod, Zeroable};

use crate::limits::{MAX_BATCH, MAX_KEY_LEN, MAX_VALUE_LEN};
use crate::operation::{Item, Op};

/// Version of this wire format, first byte of every request and response header.
/// Version 1: the format described in `docs/PROTOCOL.md, Part II`.
pub const VERSION: u8 = 1;

/// Size of [`ReqHeader`] and of [`RespHeader`] in bytes.
pub const HDR_LEN: usize = 16;

/// Response flag: the SCAN part stopped early (item cap or size cap): more items of this
/// partition may follow the last key returned.
pub const RESP_FLAG_MORE: u16 = 1;

/// Request flag (GET, PUT, DELETE, SCAN): a [`ClusterExt`](crate::ClusterExt) of
/// [`CLUSTER_EXT_LEN`](crate::CLUSTER_EXT_LEN) bytes follows the header, before the key
/// (replicated service: the shard, the client's cluster file and the write's identity).
pub const REQ_FLAG_CLUSTER: u16 = 1;

/// Request flag (GET, SCAN; only with [`REQ_FLAG_CLUSTER`]): read the receiving replica's
/// state as it is, without confirming that it leads the shard. Not linearizable (a follower
/// may be behind): for diagnostics and tests.
pub const REQ_FLAG_LOCAL: u16 = 2;

/// The rpc request types (one per KV operation).
pub mod op {
    /// INFO: the server's thread count, partitioning and limits (no key).
    pub const INFO: u8 = 1;
    /// GET: the value of a key.
    pub const GET: u8 = 2;
    /// PUT: insert or overwrite a key.
    pub const PUT: u8 = 3;
    /// DELETE: remove a key.
    pub const DELETE: u8 = 4;
    /// SCAN: the receiving thread's items with key ≥ start, in key order.
    pub const SCAN: u8 = 5;
    /// STATS: the receiving thread's counters.
    pub const STATS: u8 = 6;
    /// BATCH: several GET / PUT / DELETE requests in one message, answered by one message
    /// holding their responses in the same order (see [`super::parse_batch`]).
    pub const BATCH: u8 = 7;
    /// Every request type a client sends to a single server, in order.
    pub const ALL: [u8; 7] = [INFO, GET, PUT, DELETE, SCAN, STATS, BATCH];
    /// RAFT: Raft messages from a peer node's server thread to the same thread here
    /// (replicated service; answered with an empty response). Body: see `kv_raft::wire`.
    pub const RAFT: u8 = 16;
    /// RAFT_SNAPSHOT: one chunk of a shard snapshot from the shard's leader (answered with a
    /// one-byte verdict). Body: see `kv_raft::wire`.
    pub const RAFT_SNAPSHOT: u8 = 17;
    /// CLUSTER_STATUS: the Raft state of the receiving thread's shard replicas
    /// ([`ShardStatus`](crate::ShardStatus) entries).
    pub const CLUSTER_STATUS: u8 = 18;
    /// The request types of the replicated service (cluster mode).
    pub const CLUSTER: [u8; 3] = [RAFT, RAFT_SNAPSHOT, CLUSTER_STATUS];
}

/// A 16-bit little-endian integer with alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Le16([u8; 2]);
/// A 32-bit little-endian integer with alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Le32([u8; 4]);
/// A 64-bit little-endian integer with alignment 1.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Le64([u8; 8]);

impl Le16 {
    /// Encodes `v`.
    pub fn new(v: u16) -> Self {
        Self(v.to_le_bytes())
    }
    /// Decodes.
    pub fn get(self) -> u16 {
        u16::from_le_bytes(self.0)
    }
}
impl Le32 {
    /// Encodes `v`.
    pub fn new(v: u32) -> Self {
        Self(v.to_le_bytes())
    }
    /// Decodes.
    pub fn get(self) -> u32 {
        u32::from_le_bytes(self.0)
    }
}
impl Le64 {
    /// Encodes `v`.
    pub fn new(v: u64) -> Self {
        Self(v.to_le_bytes())
    }
    /// Decodes.
    pub fn get(self) -> u64 {
        u64::from_le_bytes(self.0)
    }
}

/// Request header (16 bytes), followed by `key_len` key bytes and `val_len` value bytes;
/// the message is exactly `16 + key_len + val_len` bytes long.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | `version` = [`VERSION`] |
/// | 1 | 1 | `op`: the rpc request type again ([`op`]) |
/// | 2 | 2 | `flags`: 0 |
/// | 4 | 4 | `key_len` (SCAN: length of the start key) |
/// | 8 | 4 | `val_len` (PUT only; else 0) |
/// | 12 | 4 | `count` (SCAN: most items wanted; else 0) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ReqHeader {
    /// Wire format version.
    pub version: u8,
    /// Operation (equals the rpc request type).
    pub op: u8,
    /// Flags, 0.
    pub flags: Le16,
    /// Key length.
    pub key_len: Le32,
    /// Value length.
    pub val_len: Le32,
    /// SCAN item count.
    pub count: Le32,
}

/// Response header (16 bytes), followed by `body_len` body bytes; the message is exactly
/// `16 + body_len` bytes long.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | `version` = [`VERSION`] |
/// | 1 | 1 | `status` ([`Status`]) |
/// | 2 | 2 | `flags`: bit 0 = [`RESP_FLAG_MORE`] (SCAN) |
/// | 4 | 4 | `count`: SCAN items in the body; else 0 |
/// | 8 | 4 | `body_len` |
/// | 12 | 4 | reserved, 0 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RespHeader {
    /// Wire format version.
    pub version: u8,
    /// Status code.
    pub status: u8,
    /// Flags.
    pub flags: Le16,
    /// SCAN item count.
    pub count: Le32,
    /// Body length.
    pub body_len: Le32,
    /// Reserved, 0.
    pub reserved: Le32,
}

/// Response status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Success; the body holds the result.
    Ok = 0,
    /// GET or DELETE of a key that does not exist.
    NotFound = 1,
    /// The key is longer than [`MAX_KEY_LEN`].
    KeyTooLarge = 2,
    /// The value is longer than [`MAX_VALUE_LEN`].
    ValueTooLarge = 3,
    /// The request is malformed (bad lengths, unknown type or flags).
    BadRequest = 4,
    /// The server cannot take the request now; retry later.
    Overloaded = 5,
    /// The server failed (I/O error, corrupt record...); the body says why.
    Internal = 6,
    /// The server is shutting down and takes no new requests.
    ShuttingDown = 7,
    /// The request's `version` is not one the server speaks.
    UnsupportedVersion = 8,
    /// Replicated service: this node does not lead the key's shard. The body is the node id
    /// of the leader it knows (u64 LE; 0 = none known yet): send the request there.
    NotLeader = 9,
}

impl Status {
    /// The status with wire code `v`.
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::KeyTooLarge,
            3 => Status::ValueTooLarge,
            4 => Status::BadRequest,
            5 => Status::Overloaded,
            6 => Status::Internal,
            7 => Status::ShuttingDown,
            8 => Status::UnsupportedVersion,
            9 => Status::NotLeader,
            _ => return None,
        })
    }

    /// A short name, e.g. `"not found"`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotFound => "not found",
            Status::KeyTooLarge => "key too large",
            Status::ValueTooLarge => "value too large",
            Status::BadRequest => "bad request",
            Status::Overloaded => "overloaded",
            Status::Internal => "internal error",
            Status::ShuttingDown => "shutting down",
            Status::UnsupportedVersion => "unsupported protocol version",
            Status::NotLeader => "not the shard's leader",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed request; borrows the message bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// INFO.
    Info,
    /// STATS.
    Stats,
    /// GET, PUT, DELETE or SCAN (a SCAN asks the receiving thread for its partition only).
    Op(Op<&'a [u8]>),
}

impl<'a> Request<'a> {
    /// The rpc request type of this request.
    pub fn op(&self) -> u8 {
        match self {
            Request::Info => op::INFO,
            Request::Stats => op::STATS,
            Request::Op(o) => o.code(),
        }
    }

    /// The key (SCAN: the start key), if the request has one.
    pub fn key(&self) -> Option<&'a [u8]> {
        match self {
            Request::Op(Op::Get { key } | Op::Put { key, .. } | Op::Delete { key }) => Some(key),
            Request::Op(Op::Scan { start, .. }) => Some(start),
            Request::Info | Request::Stats => None,
        }
    }

    /// Length of the encoded message.
    pub fn encoded_len(&self) -> usize {
        let (k, v) = self.lens();
        HDR_LEN + k + v
    }

    fn lens(&self) -> (usize, usize) {
        match self {
            Request::Op(o) => (o.key().len(), o.value().len()),
            Request::Info | Request::Stats => (0, 0),
        }
    }
}

impl<'a> From<Op<&'a [u8]>> for Request<'a> {
    fn from(o: Op<&'a [u8]>) -> Self {
        Request::Op(o)
    }
}

/// Why a request message was rejected; [`RequestError::status`] is the status to answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The header's version is not [`VERSION`].
    #[error("unsupported protocol version {0} (server speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key of {0} bytes exceeds the limit of {MAX_KEY_LEN} bytes")]
    KeyTooLarge(u64),
    /// The value is longer than [`MAX_VALUE_LEN`].
    #[error("value of {0} bytes exceeds the limit of {MAX_VALUE_LEN} bytes")]
    ValueTooLarge(u64),
    /// Anything else wrong with the message.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl RequestError {
    /// The status the server answers this error with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::UnsupportedVersion(_) => Status::UnsupportedVersion,
            RequestError::KeyTooLarge(_) => Status::KeyTooLarge,
            RequestError::ValueTooLarge(_) => Status::ValueTooLarge,
            RequestError::Malformed(_) => Status::BadRequest,
        }
    }
}

/// Why a response message could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed response: {0}")]
pub struct ResponseError(pub &'static str);

/// Encodes `req` into `out` (cleared first).
pub fn encode_request(req: &Request<'_>, out: &mut Vec<u8>) {
    out.clear();
    append_request(req, out);
}

/// Appends the encoding of `req` to `out` (how BATCH messages are built).
pub fn append_request(req: &Request<'_>, out: &mut Vec<u8>) {
    out.reserve(req.encoded_len());
    let (k, v) = req.lens();
    let hdr = ReqHeader {
        version: VERSION,
        op: req.op(),
        flags: Le16::new(0),
        key_len: Le32::new(k as u32),
        val_len: Le32::new(v as u32),
        count: Le32::new(match req {
            // The wire carries at most u32::MAX; servers cap far below that anyway.
            Request::Op(Op::Scan { max, .. }) => u32::try_from(*max).unwrap_or(u32::MAX),
            _ => 0,
        }),
    };
    out.extend_from_slice(bytemuck::bytes_of(&hdr));
    if let Request::Op(o) = req {
        out.extend_from_slice(o.key());
        out.extend_from_slice(o.value());
    }
}

/// Starts a BATCH message in `out` (cleared first): its header, with a count that
/// [`finish_batch`] sets once the requests are appended with [`append_request`].
pub fn begin_batch(out: &mut Vec<u8>) {
    out.clear();
    let hdr = ReqHeader {
        version: VERSION,
        op: op::BATCH,
        ..ReqHeader::default()
    };
    out.extend_from_slice(bytemuck::bytes_of(&hdr));
}

/// Sets the request count of a BATCH message started with [`begin_batch`].
pub fn finish_batch(out: &mut [u8], count: u32) {
    if let Some(c) = out.get_mut(12..16) {
        c.copy_from_slice(&count.to_le_bytes());
    }
}

/// The requests of a BATCH message, in order, each with its own encoding (which is a
/// complete single-request message, e.g. to forward it). Made by [`parse_batch`], which has
/// checked every request already, so iterating cannot fail.
#[derive(Clone, Debug)]
pub struct BatchRequests<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> BatchRequests<'a> {
    /// Requests not yet returned.
    pub fn len(&self) -> usize {
        self.left as usize
    }

    /// Whether every request was returned.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl<'a> Iterator for BatchRequests<'a> {
    type Item = (Request<'a>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (req, raw, rest) = split_request(self.rest).ok()?;
        self.rest = rest;
        Some((req, raw))
    }
}

/// The first request encoded at the start of `data`: (request, its bytes, what follows).
fn split_request(data: &[u8]) -> Result<(Request<'_>, &[u8], &[u8]), RequestError> {
    let hdr_bytes = data
        .get(..HDR_LEN)
        .ok_or(RequestError::Malformed("batch entry shorter than a header"))?;
    let hdr: &ReqHeader = bytemuck::try_from_bytes(hdr_bytes)
        .map_err(|_| RequestError::Malformed("header not readable"))?;
    let ext = if hdr.flags.get() & REQ_FLAG_CLUSTER != 0 {
        crate::cluster::CLUSTER_EXT_LEN as u64
    } else {
        0
    };
    let len = HDR_LEN as u64 + ext + u64::from(hdr.key_len.get()) + u64::from(hdr.val_len.get());
    if hdr.key_len.get() as usize > MAX_KEY_LEN {
        return Err(RequestError::KeyTooLarge(hdr.key_len.get().into()));
    }
    if hdr.val_len.get() as usize > MAX_VALUE_LEN {
        return Err(RequestError::ValueTooLarge(hdr.val_len.get().into()));
    }
    if len > data.len() as u64 {
        return Err(RequestError::Malformed("batch entry runs past the message"));
    }
    let (raw, rest) = data.split_at(len as usize);
    let req = parse_request(hdr.op, raw)?;
    Ok((req, raw, rest))
}

/// Parses a BATCH message (rpc request type [`op::BATCH`]): a request header with
/// `op` = BATCH, `count` = n (1..=[`MAX_BATCH`]) and no key or value, followed by n
/// GET / PUT / DELETE requests, each encoded as its own message would be. The whole message
/// is checked before anything is returned: one bad entry rejects the batch, so a server
/// executes all of it or none of it.
pub fn parse_batch(data: &[u8]) -> Result<BatchRequests<'_>, RequestError> {
    let hdr = read_header(op::BATCH, data)?;
    if hdr.flags.get() != 0 || hdr.key_len.get() != 0 || hdr.val_len.get() != 0 {
        return Err(RequestError::Malformed(
            "a BATCH header carries no flags, key or value",
        ));
    }
    let n = hdr.count.get();
    if n == 0 || n > MAX_BATCH {
        return Err(RequestError::Malformed("BATCH count must be 1..=256"));
    }
    let body = data.get(HDR_LEN..).unwrap_or(&[]);
    let mut rest = body;
    for _ in 0..n {
        let (req, _, r) = split_request(rest)?;
        if !matches!(
            req,
            Request::Op(Op::Get { .. } | Op::Put { .. } | Op::Delete { .. })
        ) {
            return Err(RequestError::Malformed(
                "a BATCH holds only GET, PUT and DELETE",
            ));
        }
        rest = r;
    }
    if !rest.is_empty() {
        return Err(RequestError::Malformed("bytes after the last BATCH entry"));
    }
    Ok(BatchRequests {
        rest: body,
        left: n,
    })
}

/// Parses the `n` responses in the body of a successful BATCH response (each a complete
/// response message: header + body), in request order. They must fill the body exactly.
pub fn parse_batch_responses(body: &[u8], n: u32) -> Result<Vec<Response<'_>>, ResponseError> {
    let mut out = Vec::with_capacity((n as usize).min(body.len() / HDR_LEN));
    let mut rest = body;
    for _ in 0..n {
        let hdr_bytes = rest
            .get(..HDR_LEN)
            .ok_or(ResponseError("truncated BATCH entry"))?;
        let hdr: &RespHeader = bytemuck::try_from_bytes(hdr_bytes)
            .map_err(|_| ResponseError("header not readable"))?;
        let len = HDR_LEN as u64 + u64::from(hdr.body_len.get());
        if len > rest.len() as u64 {
            return Err(ResponseError("BATCH entry runs past the message"));
        }
        let (one, r) = rest.split_at(len as usize);
        out.push(parse_response(one)?);
        rest = r;
    }
    if !rest.is_empty() {
        return Err(ResponseError("bytes after the last BATCH entry"));
    }
    Ok(out)
}

/// The request header at the start of `data`, checked for its version and for naming
/// `req_type`.
fn read_header(req_type: u8, data: &[u8]) -> Result<&ReqHeader, RequestError> {
    let hdr_bytes = data
        .get(..HDR_LEN)
        .ok_or(RequestError::Malformed("shorter than the 16-byte header"))?;
    let hdr: &ReqHeader = bytemuck::try_from_bytes(hdr_bytes)
        .map_err(|_| RequestError::Malformed("header not readable"))?;
    if hdr.version != VERSION {
        return Err(RequestError::UnsupportedVersion(hdr.version));
    }
    if hdr.op != req_type {
        return Err(RequestError::Malformed(
            "header op differs from the rpc request type",
        ));
    }
    Ok(hdr)
}

/// Parses the request message `data` received with rpc request type `req_type`.
pub fn parse_request(req_type: u8, data: &[u8]) -> Result<Request<'_>, RequestError> {
    let hdr = read_header(req_type, data)?;
    let flags = hdr.flags.get();
    if flags & !(REQ_FLAG_CLUSTER | REQ_FLAG_LOCAL) != 0 {
        return Err(RequestError::Malformed("unknown flags"));
    }
    let ext = if flags & REQ_FLAG_CLUSTER != 0 {
        if !matches!(req_type, op::GET | op::PUT | op::DELETE | op::SCAN) {
            return Err(RequestError::Malformed(
                "only GET, PUT, DELETE and SCAN carry the cluster extension",
            ));
        }
        crate::cluster::CLUSTER_EXT_LEN
    } else {
        0
    };
    if flags & REQ_FLAG_LOCAL != 0 && (ext == 0 || !matches!(req_type, op::GET | op::SCAN)) {
        return Err(RequestError::Malformed(
            "the LOCAL flag is for GET and SCAN with the cluster extension",
        ));
    }
    let key_len = u64::from(hdr.key_len.get());
    let val_len = u64::from(hdr.val_len.get());
    let count = hdr.count.get();
    if key_len > MAX_KEY_LEN as u64 {
        return Err(RequestError::KeyTooLarge(key_len));
    }
    if val_len > MAX_VALUE_LEN as u64 {
        return Err(RequestError::ValueTooLarge(val_len));
    }
    let rest = data.get(HDR_LEN..).unwrap_or(&[]);
    if rest.len() as u64 != ext as u64 + key_len + val_len {
        return Err(RequestError::Malformed(
            "message length differs from 16 + extension + key_len + val_len",
        ));
    }
    let rest = rest.get(ext..).unwrap_or(&[]);
    let (key, value) = rest.split_at(key_len as usize);
    let no_key = |r: Request<'static>| {
        if key_len != 0 || val_len != 0 || count != 0 {
            Err(RequestError::Malformed(
                "INFO and STATS carry no key, value or count",
            ))
        } else {
            Ok(r)
        }
    };
    let no_value = || {
        if val_len != 0 {
            Err(RequestError::Malformed("only PUT carries a value"))
        } else {
            Ok(())
        }
    };
    let no_count = || {
        if count != 0 {
            Err(RequestError::Malformed("only SCAN carries a count"))
        } else {
            Ok(())
        }
    };
    match req_type {
        op::INFO => no_key(Request::Info),
        op::STATS => no_key(Request::Stats),
        op::GET => {
            no_value()?;
            no_count()?;
            Ok(Request::Op(Op::Get { key }))
        }
        op::DELETE => {
            no_value()?;
            no_count()?;
            Ok(Request::Op(Op::Delete { key }))
        }
        op::PUT => {
            no_count()?;
            Ok(Request::Op(Op::Put { key, value }))
        }
        op::SCAN => {
            no_value()?;
            Ok(Request::Op(Op::Scan {
                start: key,
                max: count as usize,
            }))
        }
        _ => Err(RequestError::Malformed("unknown request type")),
    }
}

/// Encodes the response header for `status` into the first [`HDR_LEN`] bytes of `out`.
/// Returns `false` (writing nothing) if `out` is shorter.
pub fn write_resp_header(
    out: &mut [u8],
    status: Status,
    flags: u16,
    count: u32,
    body_len: usize,
) -> bool {
    let hdr = RespHeader {
        version: VERSION,
        status: status as u8,
        flags: Le16::new(flags),
        count: Le32::new(count),
        body_len: Le32::new(body_len as u32),
        reserved: Le32::new(0),
    };
    match out.get_mut(..HDR_LEN) {
        Some(dst) => {
            dst.copy_from_slice(bytemuck::bytes_of(&hdr));
            true
        }
        None => false,
    }
}

/// Encodes a whole response (header + `body`) into `out` (cleared first).
pub fn encode_response(status: Status, flags: u16, count: u32, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(HDR_LEN, 0);
    write_resp_header(out, status, flags, count, body.len());
    out.extend_from_slice(body);
}

/// A parsed response; borrows the message bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The status.
    pub status: Status,
    /// Flags ([`RESP_FLAG_MORE`]).
    pub flags: u16,
    /// SCAN item count.
    pub count: u32,
    /// The body: GET value, SCAN items, INFO / STATS body, or an error message.
    pub body: &'a [u8],
}

impl Response<'_> {
    /// The body as an error message (lossy UTF-8).
    pub fn message(&self) -> String {
        String::from_utf8_lossy(self.body).into_owned()
    }
}

/// Parses a response message.
pub fn parse_response(data: &[u8]) -> Result<Response<'_>, ResponseError> {
    let hdr_bytes = data
        .get(..HDR_LEN)
        .ok_or(ResponseError("shorter than the 16-byte header"))?;
    let hdr: &RespHeader =
        bytemuck::try_from_bytes(hdr_bytes).map_err(|_| ResponseError("header not readable"))?;
    if hdr.version != VERSION {
        return Err(ResponseError("unsupported protocol version"));
    }
    let status = Status::from_u8(hdr.status).ok_or(ResponseError("unknown status code"))?;
    let body = data.get(HDR_LEN..).unwrap_or(&[]);
    if body.len() as u64 != u64::from(hdr.body_len.get()) {
        return Err(ResponseError("message length differs from 16 + body_len"));
    }
    Ok(Response {
        status,
        flags: hdr.flags.get(),
        count: hdr.count.get(),
        body,
    })
}

/// Bytes one SCAN item takes in a response body.
pub fn scan_item_len(key: &[u8], value: &[u8]) -> usize {
    8 + key.len() + value.len()
}

/// Appends one SCAN item (`key_len u32, val_len u32, key, value`) to `out`.
pub fn encode_scan_item(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Parses a SCAN response body holding `count` items; the items must fill it exactly and
/// respect the key and value limits.
pub fn parse_scan_items(body: &[u8], count: u32) -> Result<Vec<Item>, ResponseError> {
    let mut items = Vec::with_capacity((count as usize).min(body.len() / 8));
    let mut rest = body;
    for _ in 0..count {
        let lens = rest.get(..8).ok_or(ResponseError("truncated scan item"))?;
        let (kl, vl) = lens.split_at(4);
        let kl = u32::from_le_bytes(kl.try_into().map_err(|_| ResponseError("scan item"))?);
        let vl = u32::from_le_bytes(vl.try_into().map_err(|_| ResponseError("scan item"))?);
        let (kl, vl) = (kl as usize, vl as usize);
        if kl > MAX_KEY_LEN || vl > MAX_VALUE_LEN {
            return Err(ResponseError("scan item over the size limits"));
        }
        let data = rest.get(8..).unwrap_or(&[]);
        let key = data.get(..kl).ok_or(ResponseError("truncated scan key"))?;
        let value = data
            .get(kl..kl + vl)
            .ok_or(ResponseError("truncated scan value"))?;
        items.push((key.to_vec(), value.to_vec()));
        rest = data.get(kl + vl..).unwrap_or(&[]);
    }
    if !rest.is_empty() {
        return Err(ResponseError("bytes after the last scan item"));
    }
    Ok(items)
}

/// Body of a successful INFO response (32 bytes).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `threads`: server threads W (one partition each) |
/// | 4 | 4 | `thread_id`: the thread that answered |
/// | 8 | 4 | `partitioning`: [`PARTITION_FNV1A64_MOD`](crate::PARTITION_FNV1A64_MOD) |
/// | 12 | 4 | `max_key`: largest key in bytes |
/// | 16 | 4 | `max_value`: largest value in bytes |
/// | 20 | 4 | `max_scan`: most items per SCAN response |
/// | 24 | 4 | `max_batch`: most requests per BATCH; 0 = BATCH not supported |
/// | 28 | 4 | reserved, 0 |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct InfoBody {
    /// Server threads (partitions).
    pub threads: Le32,
    /// The answering thread.
    pub thread_id: Le32,
    /// Partitioning scheme.
    pub partitioning: Le32,
    /// Largest key.
    pub max_key: Le32,
    /// Largest value.
    pub max_value: Le32,
    /// Most items per SCAN response.
    pub max_scan: Le32,
    /// Most requests per BATCH (0: none).
    pub max_batch: Le32,
    /// [`INFO_WRITES_AT_ONCE`] and future flags (0 from servers that predate them).
    pub flags: Le32,
}

/// INFO flag: the server acknowledges a write without waiting for a disk write (its engine
/// stages writes and flushes them later), so a BATCH that mixes reads and writes is
/// answered as soon as one of reads alone. Without it a client keeps them apart: a BATCH is
/// answered when its slowest entry is done.
pub const INFO_WRITES_AT_ONCE: u32 = 1;

/// What a server says about itself in its INFO response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// Server threads W; key `k` is served by thread `fnv1a64(k) mod W`.
    pub threads: u32,
    /// The thread that answered.
    pub thread_id: u32,
    /// Partitioning scheme ([`PARTITION_FNV1A64_MOD`](crate::PARTITION_FNV1A64_MOD)).
    pub partitioning: u32,
    /// Largest key in bytes.
    pub max_key: u32,
    /// Largest value in bytes.
    pub max_value: u32,
    /// Most items per SCAN response.
    pub max_scan: u32,
    /// Most requests per BATCH message; 0 if the server does not take BATCH.
    pub max_batch: u32,
    /// Flags ([`INFO_WRITES_AT_ONCE`]); unknown bits are ignored.
    pub flags: u32,
}

impl ServerInfo {
    /// The INFO body.
    pub fn encode(&self) -> InfoBody {
        InfoBody {
            threads: Le32::new(self.threads),
            thread_id: Le32::new(self.thread_id),
            partitioning: Le32::new(self.partitioning),
            max_key: Le32::new(self.max_key),
            max_value: Le32::new(self.max_value),
            max_scan: Le32::new(self.max_scan),
            max_batch: Le32::new(self.max_batch),
            flags: Le32::new(self.flags),
        }
    }

    /// Parses an INFO body.
    pub fn parse(body: &[u8]) -> Result<ServerInfo, ResponseError> {
        let b: &InfoBody =
            bytemuck::try_from_bytes(body).map_err(|_| ResponseError("INFO body size"))?;
        Ok(ServerInfo {
            threads: b.threads.get(),
            thread_id: b.thread_id.get(),
            partitioning: b.partitioning.get(),
            max_key: b.max_key.get(),
            max_value: b.max_value.get(),
            max_scan: b.max_scan.get(),
            max_batch: b.max_batch.get(),
            flags: b.flags.get(),
        })
    }
}

macro_rules! stats_struct {
    ($(#[$m:meta])* $name:ident, $body:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $f: u64,)*
        }

        /// Wire form of [`ThreadStats`]: its fields in declaration order, each a
        /// little-endian u64.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
        pub struct $body {
            $($(#[$fm])* pub $f: Le64,)*
        }

        impl $name {
            /// The STATS body.
            pub fn encode(&self) -> $body {
                $body { $($f: Le64::new(self.$f),)* }
            }

            /// Parses a STATS body.
            pub fn parse(body: &[u8]) -> Result<$name, ResponseError> {
                let b: &$body = bytemuck::try_from_bytes(body)
                    .map_err(|_| ResponseError("STATS body size"))?;
                Ok($name { $($f: b.$f.get(),)* })
            }

            /// Adds `o`'s counters to these (`thread_id` is kept).
            pub fn add(&mut self, o: &$name) {
                let id = self.thread_id;
                $(self.$f = self.$f.wrapping_add(o.$f);)*
                self.thread_id = id;
            }

            /// `name=value` pairs separated by spaces, one line.
            pub fn to_line(&self) -> String {
                let parts: Vec<String> = vec![$(format!("{}={}", stringify!($f), self.$f)),*];
                parts.join(" ")
            }
        }
    };
}

stats_struct!(
    /// Counters of one server thread (the body of a successful STATS response).
    ThreadStats,
    StatsBody {
        /// The thread.
        thread_id,
        /// Live items in the thread's partition.
        items,
        /// GET requests served.
        gets,
        /// PUT requests served.
        puts,
        /// DELETE requests served.
        deletes,
        /// SCAN requests served.
        scans,
        /// GET / DELETE answered NOT_FOUND.
        not_found,
        /// Requests answered with an error status (other than NOT_FOUND).
        errors,
        /// Requests rejected as malformed or over the limits.
        bad_requests,
        /// Requests for another thread's key, forwarded to that thread.
        forwarded,
        /// Engine block reads.
        engine_reads,
        /// Engine block writes.
        engine_writes,
        /// Engine page cache hits.
        cache_hits,
        /// Engine page cache misses.
        cache_misses,
        /// Bytes of the thread's slab files.
        file_bytes,
        /// Estimated index memory.
        index_bytes,
        /// Live rpc sessions of the thread.
        sessions,
        /// Sessions the thread freed because their client vanished without closing them
        /// (detected by the liveness timeout); a client that closes its sessions is not
        /// counted here.
        sessions_reaped,
    }
);
