//! Stateful target for the rpc protocol core: a client and a server `rpc::proto::Endpoint`
//! driven against each other directly in virtual time (the `Pair` harness of the rpc tests,
//! `rpc/tests/common/pair.rs`), a legitimate multi-packet request in flight, and raw datapath
//! packets and session-management messages from the fuzz input injected at the server (or the
//! client) while it runs.
//!
//! The input is a list of operations:
//! - `op & 3 == 0`: run the pair for the next byte's worth of steps (each step runs what is
//!   due now, then moves time to the next arrival or timer);
//! - `op & 3 == 3`: inject one SM message: 128 bytes from the input; bit 2: towards the client
//!   instead of the server; bit 3: set both session numbers and tokens to the real ones;
//!   bit 4: set the magic and version and zero the reserved bytes; bit 5: set `seq` to the
//!   real connect's. Messages that do not parse are still counted as injected and dropped, as
//!   the SM router would;
//! - otherwise inject one datapath packet; the other bits of `op` patch it so that the fuzzer
//!   reaches the session logic behind the header checks:
//!   - bit 2: inject at the client instead of the server;
//!   - bit 3: set `dest_session` and `token` to the real ones of the destination's session;
//!   - bit 4: set `magic` and `version` to valid values and zero the reserved bytes;
//!   - bit 5: set `req_num` to the legitimate request's plus the next byte (as i8);
//!   - bit 6: set `msg_size` to the legitimate request's (server) or response's (client) size;
//!   - bit 7: the packet is a 32-byte header from the input plus a payload whose length is
//!     the one the receiver expects for (`msg_size`, `pkt_num`); else its length is the next
//!     two bytes (LE, mod 1100). Bytes past the end of the input are zero.
//!
//! Properties:
//! - nothing panics, with or without forged input; the harness's own checks hold (no packet
//!   leaves on a route that is not allocated and resolved, no route is freed twice, liveness
//!   events pair up);
//! - no livelock: the endpoints do not report work forever without virtual time moving;
//! - when no injected packet or message carried a real token of its destination (so every
//!   one of them must be dropped or refused), the legitimate request completes exactly once,
//!   with the right response, and its handler ran exactly once.
//!
//! Input carrying a real token can legitimately disturb the session (the token is the only
//! thing that authenticates it, as in eRPC): then only the first two properties are checked.
#![no_main]

#[path = "../../rpc/tests/common/pair.rs"]
mod pair;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pair::{Pair, Side, Wire, MTU};
use rpc::pkthdr::{PktHdr, PktType, HDR_SIZE, MAGIC, VERSION};
use rpc::sm::{SmMsg, SmType, SM_MSG_SIZE};
use rpc::{RpcConfig, SessionId};

const DPP: usize = MTU - HDR_SIZE;
/// The legitimate request: 3 request packets, 3 response packets (CRs and RFRs both used).
const REQ_SIZE: usize = 2500;
const RESP_SIZE: u32 = 2300;
const LEGIT_ID: u64 = 0x5eed;
/// Virtual time the legitimate request has to complete in (rto is 5 ms).
const BUDGET_NS: u64 = 2_000_000_000;

fn pattern_byte(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8
}

fn make_request(id: u64, size: usize, resp_size: u32) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size.max(12)).map(|i| pattern_byte(id, i)).collect();
    v[..8].copy_from_slice(&id.to_le_bytes());
    v[8..12].copy_from_slice(&resp_size.to_le_bytes());
    v
}

fn parse_request(data: &[u8]) -> Option<(u64, u32)> {
    let id = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let resp = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let ok = data
        .iter()
        .enumerate()
        .skip(12)
        .all(|(i, &b)| b == pattern_byte(id, i));
    // Bound what a forged request can make the handler allocate.
    (ok && resp <= 64 << 10).then_some((id, resp))
}

fn check(buf: &[u8], id: u64) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(id, i))
}

fn config() -> RpcConfig {
    RpcConfig {
        max_msg_size: 256 << 10,
        buffer_cache_bytes: 1 << 20,
        ..RpcConfig::default()
    }
}

/// Builds the pair, with the pattern server, and connects.
fn pair() -> (Pair, SessionId) {
    let mut p = Pair::new(config(), config(), 7);
    // Handler runs are counted by the harness per request payload; a request that does not
    // parse (forged) gets an empty response.
    p.server.handler = Box::new(|_, data| {
        Some(match parse_request(data) {
            Some((id, resp)) => (0..resp as usize).map(|i| pattern_byte(!id, i)).collect(),
            None => Vec::new(),
        })
    });
    let s = p.connect();
    (p, s)
}

/// What the discovery run learns: the real header fields and tokens of both directions.
#[derive(Clone, Copy, Debug)]
struct Known {
    /// (dest_session, token) of packets to the server.
    to_server: (u32, u32),
    /// (dest_session, token) of packets to the client.
    to_client: (u32, u32),
    /// req_num of the legitimate request.
    req_num: u64,
    /// The connect's SM fields: (client session, server session, client token, server
    /// token, seq).
    sm: (u32, u32, u32, u32, u64),
}

/// Runs the legitimate request once, without injection, and records the headers.
fn discover() -> Known {
    let (mut p, s) = pair();
    enqueue_legit(&mut p, s);
    let (ok, seen) = run_legit(&mut p);
    assert!(
        ok && seen == 1,
        "discovery: the legitimate request did not complete"
    );
    let first_data = |log: &[(u64, Wire)]| {
        log.iter()
            .find_map(|(_, w)| match w {
                Wire::Data(b) => PktHdr::parse(b).ok().map(|(i, _)| i),
                Wire::Sm(..) => None,
            })
            .unwrap()
    };
    let c = first_data(&p.to_server.log);
    let sv = first_data(&p.to_client.log);
    assert_eq!(c.pkt_type, PktType::Req);
    let resp = p
        .to_client
        .log
        .iter()
        .find_map(|(_, w)| match w {
            Wire::Sm(_, m) if m.msg_type == SmType::ConnectResp => Some(*m),
            _ => None,
        })
        .unwrap();
    Known {
        to_server: (c.dest_session, c.token),
        to_client: (sv.dest_session, sv.token),
        req_num: c.req_num,
        sm: (
            resp.client_session,
            resp.server_session,
            resp.client_token,
            resp.server_token,
            resp.seq,
        ),
    }
}

fn enqueue_legit(p: &mut Pair, s: SessionId) {
    p.enqueue(s, &make_request(LEGIT_ID, REQ_SIZE, RESP_SIZE), LEGIT_ID)
        .unwrap();
}

/// Runs until the legitimate request completes or the budget is spent. Returns (completed
/// correctly, completions seen).
fn run_legit(p: &mut Pair) -> (bool, u32) {
    let limit = p.now + BUDGET_NS;
    p.run_until(limit, |p| !p.client.completions.is_empty());
    let mut ok = false;
    let mut seen = 0;
    for c in p.client.take_completions() {
        seen += 1;
        assert_eq!(c.tag, LEGIT_ID);
        if let Ok(resp) = &c.result {
            ok = resp.len() == RESP_SIZE as usize && check(resp.as_slice(), !LEGIT_ID);
        }
    }
    (ok, seen)
}

fn known() -> Known {
    static K: OnceLock<Known> = OnceLock::new();
    *K.get_or_init(discover)
}

/// Reads the fuzz input front to back; zeros past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let take = n.min(self.0.len());
        let mut v = self.0[..take].to_vec();
        self.0 = &self.0[take..];
        v.resize(n, 0);
        v
    }
}

fn pkt_len(size: usize, i: u32) -> usize {
    size.saturating_sub((i as usize).saturating_mul(DPP))
        .min(DPP)
}

/// Builds an SM message from the input; returns it and whether it carries a real token.
fn sm_message(op: u8, input: &mut Input<'_>, k: &Known) -> Option<(SmMsg, bool)> {
    let mut b = input.bytes(SM_MSG_SIZE);
    let (cs, ss, ct, st, seq) = k.sm;
    if op & 8 != 0 {
        b[8..12].copy_from_slice(&cs.to_le_bytes());
        b[12..16].copy_from_slice(&ss.to_le_bytes());
        b[16..20].copy_from_slice(&ct.to_le_bytes());
        b[20..24].copy_from_slice(&st.to_le_bytes());
    }
    if op & 16 != 0 {
        b[..3].copy_from_slice(b"SM\x01");
        b[49..52].fill(0);
        b[116..].fill(0);
    }
    if op & 32 != 0 {
        b[24..32].copy_from_slice(&seq.to_le_bytes());
    }
    let m = SmMsg::parse(&b).ok()?;
    let authentic = m.client_token == ct || m.server_token == st;
    Some((m, authentic))
}

fuzz_target!(|data: &[u8]| {
    let k = known();
    let (mut p, s) = pair();
    enqueue_legit(&mut p, s);
    let mut input = Input(data);
    let mut authentic = false;
    let mut injected = 0;
    while !input.0.is_empty() && injected < 256 {
        let op = input.byte();
        if op & 3 == 0 {
            let limit = p.now + BUDGET_NS;
            for _ in 0..input.byte() {
                if !p.advance(limit) {
                    break;
                }
            }
            continue;
        }
        injected += 1;
        let towards = if op & 4 != 0 {
            Side::Client
        } else {
            Side::Server
        };
        if op & 3 == 3 {
            if let Some((m, real)) = sm_message(op, &mut input, &k) {
                authentic |= real;
                p.inject_sm(towards, m);
            }
            continue;
        }
        let to_client = towards == Side::Client;
        let mut pkt = input.bytes(HDR_SIZE);
        let (session, token) = if to_client { k.to_client } else { k.to_server };
        if op & 8 != 0 {
            pkt[4..8].copy_from_slice(&session.to_le_bytes());
            pkt[24..28].copy_from_slice(&token.to_le_bytes());
        }
        if op & 16 != 0 {
            pkt[0] = MAGIC;
            pkt[1] = VERSION;
            pkt[29..32].fill(0);
        }
        if op & 32 != 0 {
            let delta = input.byte() as i8 as i64;
            let r = k.req_num.wrapping_add_signed(delta);
            pkt[16..24].copy_from_slice(&r.to_le_bytes());
        }
        if op & 64 != 0 {
            let size = if to_client {
                RESP_SIZE as usize
            } else {
                REQ_SIZE
            };
            pkt[12..16].copy_from_slice(&(size as u32).to_le_bytes());
        }
        let payload_len = if op & 128 != 0 {
            let size = u32::from_le_bytes(pkt[12..16].try_into().unwrap()) as usize;
            let pkt_num = u32::from_le_bytes(pkt[8..12].try_into().unwrap());
            // Response packet k ≥ 1 carries pkt_num = n_req - 1 + k.
            let i = if to_client {
                let n_req = REQ_SIZE.div_ceil(DPP) as u32;
                pkt_num.saturating_sub(n_req - 1)
            } else {
                pkt_num
            };
            pkt_len(size, i)
        } else {
            let lo = input.byte() as usize;
            let hi = input.byte() as usize;
            (lo | hi << 8) % 1100
        };
        pkt.extend(input.bytes(payload_len.min(MTU)));
        if let Ok((info, _)) = PktHdr::parse(&pkt) {
            if (info.dest_session, info.token) == (session, token) {
                authentic = true;
            }
        }
        p.inject(towards, pkt);
    }
    let (ok, seen) = run_legit(&mut p);
    if !authentic {
        assert_eq!(seen, 1, "legitimate request did not complete");
        assert!(ok, "legitimate request completed with a wrong response");
        let req = make_request(LEGIT_ID, REQ_SIZE, RESP_SIZE);
        assert_eq!(p.server.runs.get(&req), Some(&1));
        assert_eq!(p.server.runs.len(), 1, "no forged request reached the handler");
    }
    // Either way, keep the pair running a little: late packets, timers, retransmissions.
    let limit = p.now + BUDGET_NS;
    for _ in 0..64 {
        if !p.advance(limit) {
            break;
        }
        p.client.take_completions();
    }
});
