//! Responses, as what they mean to the client.

use kv_proto::{self as protocol, op, Item, Reply, Response, ServerInfo, Status, ThreadStats};

use crate::error::Error;

/// What a response decodes to.
pub(crate) enum Decoded {
    Reply(Reply),
    /// One server thread's SCAN part: its items and whether it may hold more.
    Scan(Vec<Item>, bool),
    Info(ServerInfo),
    Stats(ThreadStats),
    /// Each BATCH entry's outcome, in order.
    Batch(Vec<Result<Reply, Error>>),
}

/// Decodes the response message `m` to a request of type `op`.
pub(crate) fn decode(op: u8, m: &[u8]) -> Result<Decoded, Error> {
    let r = protocol::parse_response(m)?;
    decode_parsed(op, &r)
}

/// Decodes a parsed response to a request of type `op`.
fn decode_parsed(op: u8, r: &Response<'_>) -> Result<Decoded, Error> {
    match r.status {
        Status::Ok => {}
        Status::NotFound if op == op::GET || op == op::DELETE => {
            return Ok(Decoded::Reply(Reply::NotFound))
        }
        status => return Err(Error::from_status(status, r.message())),
    }
    Ok(match op {
        op::GET => Decoded::Reply(Reply::Value(r.body.to_vec())),
        op::PUT => Decoded::Reply(Reply::Written),
        op::DELETE => Decoded::Reply(Reply::Deleted),
        op::SCAN => Decoded::Scan(
            protocol::parse_scan_items(r.body, r.count)?,
            r.flags & protocol::RESP_FLAG_MORE != 0,
        ),
        op::INFO => Decoded::Info(ServerInfo::parse(r.body)?),
        op::STATS => Decoded::Stats(ThreadStats::parse(r.body)?),
        _ => return Err(Error::Incompatible(format!("unknown request type {op}"))),
    })
}

/// Decodes the response to a BATCH whose entries had the operations in `tags`.
pub(crate) fn decode_batch(tags: &[(u64, u8)], m: &[u8]) -> Result<Decoded, Error> {
    let r = protocol::parse_response(m)?;
    if r.status != Status::Ok {
        return Err(Error::from_status(r.status, r.message()));
    }
    if r.count as usize != tags.len() {
        return Err(Error::Incompatible(format!(
            "BATCH of {} answered with {} entries",
            tags.len(),
            r.count
        )));
    }
    let parts = protocol::parse_batch_responses(r.body, r.count)?;
    let replies = tags
        .iter()
        .zip(parts)
        .map(|(&(_, op), part)| {
            decode_parsed(op, &part).and_then(|d| match d {
                Decoded::Reply(r) => Ok(r),
                _ => Err(Error::Incompatible("unexpected BATCH entry".into())),
            })
        })
        .collect();
    Ok(Decoded::Batch(replies))
}
