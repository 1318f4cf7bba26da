//! The reservation id callers get carries a receipt: the amount and the
//! windows the reservation holds. Settle builds its one write from it
//! instead of reading the reservation first (one DynamoDB request, not
//! two). The write is conditional on the receipt's digest stored with the
//! reservation, so an altered receipt changes nothing: it fails, and settle
//! falls back to reading the reservation.
//!
//! Form: `<id>.<base64url(JSON)>`; a bare `<id>` is accepted too.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::model::{EntityKind, EntityRef, Hold, Reservation, SlotId};
use crate::money::Money;

/// Receipts longer than this are not handed out (the bare id is): ids
/// travel in headers and DynamoDB keys.
pub const MAX_RECEIPT: usize = 1200;

/// Whether `id` has the form authorize hands out
/// (`service::reservation_id`, then [`external_id`]): `r-` and 32
/// lowercase hex digits, optionally `.` and a receipt of 1 to
/// [`MAX_RECEIPT`] base64url characters. Anything else is no reservation
/// of ours, answered without a store request.
pub fn is_reservation_id(id: &str) -> bool {
    let (base, receipt) = match id.split_once('.') {
        Some((base, receipt)) => (base, Some(receipt)),
        None => (id, None),
    };
    let base_ok = base.len() == 2 + crate::service::RESERVATION_HEX
        && base.starts_with("r-")
        && base[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let receipt_ok = receipt.is_none_or(|r| {
        (1..=MAX_RECEIPT).contains(&r.len())
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    base_ok && receipt_ok
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    /// Amount in nano-USD.
    a: i64,
    /// Holds: entity kind, entity id, window id, generation, incarnation.
    h: Vec<(String, String, String, u64, u64)>,
    /// The key's user and team, also when they hold no window (so a settle
    /// answered from the receipt names them, as one read from the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
}

/// The receipt of a reservation of `amount` holding `holds`, for a key of
/// `user` and `team` (`None` when it would be too long to hand out).
pub fn encode(
    amount: Money,
    holds: &[Hold],
    user: Option<&str>,
    team: Option<&str>,
) -> Option<String> {
    let body = Body {
        u: user.map(str::to_string),
        t: team.map(str::to_string),
        a: amount.nanos(),
        h: holds
            .iter()
            .map(|h| {
                (
                    // A sharded entity's slot: `team#3` (see escrow.rs).
                    match h.entity.slot {
                        None => h.entity.kind.as_str().to_string(),
                        Some(SlotId::Pool) => format!("{}#pool", h.entity.kind),
                        Some(SlotId::Shard(k)) => format!("{}#{k}", h.entity.kind),
                    },
                    h.entity.id.clone(),
                    h.window.clone(),
                    h.generation,
                    h.incarnation,
                )
            })
            .collect(),
    };
    let json = serde_json::to_vec(&body).ok()?;
    let text = URL_SAFE_NO_PAD.encode(json);
    (text.len() <= MAX_RECEIPT).then_some(text)
}

pub fn digest(receipt: &str) -> String {
    hex::encode(&Sha256::digest(receipt.as_bytes())[..16])
}

/// The id handed to callers: `<id>.<receipt>` (or the bare id, for a
/// reservation made without one).
pub fn external_id(r: &Reservation) -> String {
    if r.receipt_digest.is_none() {
        return r.id.clone();
    }
    let (user, team) = (r.user_id.as_deref(), r.team_id.as_deref());
    match r
        .receipt
        .clone()
        .or_else(|| encode(r.amount, &r.holds, user, team))
    {
        Some(receipt) => format!("{}.{receipt}", r.id),
        None => r.id.clone(),
    }
}

/// The stored id of an id as callers give it.
pub fn base_id(external: &str) -> &str {
    external.split_once('.').map_or(external, |(base, _)| base)
}

/// The reservation as its receipt describes it, assumed still held; `None`
/// for a bare id or a receipt that does not decode.
pub fn from_receipt(external: &str, now: DateTime<Utc>) -> Option<Reservation> {
    let (base, receipt) = external.split_once('.')?;
    let json = URL_SAFE_NO_PAD.decode(receipt).ok()?;
    let body: Body = serde_json::from_slice(&json).ok()?;
    let mut holds = Vec::new();
    let (mut user_id, mut team_id, mut key_hash) = (body.u, body.t, String::new());
    for (kind, id, window, generation, incarnation) in body.h {
        let (kind, slot) = match kind.split_once('#') {
            None => (kind.as_str(), None),
            Some((k, "pool")) => (k, Some(SlotId::Pool)),
            Some((k, n)) => (k, Some(SlotId::Shard(n.parse().ok()?))),
        };
        let kind = EntityKind::parse(kind)?;
        match kind {
            EntityKind::Key => key_hash = id.clone(),
            EntityKind::User => user_id = Some(id.clone()),
            EntityKind::Team => team_id = Some(id.clone()),
            EntityKind::TeamMember
            | EntityKind::Organization
            | EntityKind::Customer
            | EntityKind::Model
            | EntityKind::Tag => {}
        }
        let entity = EntityRef::new(kind, id);
        holds.push(Hold {
            entity: match slot {
                Some(s) => entity.at(s),
                None => entity,
            },
            incarnation,
            window,
            generation,
        });
    }
    if body.a < 0 {
        return None;
    }
    let mut r = Reservation::held(
        base,
        Money::from_nanos(body.a),
        holds,
        key_hash,
        (user_id, team_id),
        now,
        now,
    );
    r.receipt_digest = Some(digest(receipt));
    r.receipt = Some(receipt.to_string());
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_refuse_garbage() {
        let holds = vec![
            Hold {
                entity: EntityRef::key("ab"),
                incarnation: 3,
                window: "1d".into(),
                generation: 7,
            },
            Hold {
                entity: EntityRef::user("u.1"),
                incarnation: 4,
                window: "lifetime".into(),
                generation: 9,
            },
            Hold {
                entity: EntityRef::team("team-9").at(SlotId::Shard(3)),
                incarnation: 5,
                window: "1d".into(),
                generation: 2,
            },
        ];
        let now = Utc::now();
        let owners = (Some("u.1".into()), Some("team-9".into()));
        let mut r = Reservation::held(
            "r-1",
            Money::from_nanos(5),
            holds.clone(),
            "ab",
            owners,
            now,
            now,
        );
        r.receipt_digest =
            encode(Money::from_nanos(5), &holds, Some("u.1"), Some("team-9")).map(|r| digest(&r));
        let id = external_id(&r);
        assert!(id.starts_with("r-1."));
        assert_eq!(base_id(&id), "r-1");
        let back = from_receipt(&id, now).unwrap();
        // The team's hold is on its shard 3; its user and team are named.
        assert_eq!(
            (back.amount, back.holds, back.user_id, back.team_id),
            (r.amount, holds, r.user_id, r.team_id)
        );
        assert_eq!(back.receipt_digest, r.receipt_digest);
        assert!(from_receipt("r-1", now).is_none());
        assert!(from_receipt("r-1.!!!", now).is_none());
        assert!(from_receipt("r-1.e30", now).is_none());
        assert_eq!(base_id("r-1"), "r-1");
    }
}
