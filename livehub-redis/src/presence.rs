//! The [`PresenceStore`] side of [`RedisEngine`].
//!
//! Per scope a hash (session -> member JSON), a sorted set (session -> expiry, ms on the
//! Redis clock), a sorted set of the session ids in lexical order (pages) and a hash of the
//! sessions per user (counts, users' comings and goings); one index of scopes (scope id -> a lower bound of its next expiry) lets
//! `expire` visit only the scopes that may hold expired members. Writes that touch a scope
//! are scripts on that scope's slot; the index lives in its own slot and is written after
//! the scope, so that a scope with members is always in the index (see `expire`).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use livehub_core::broker::BrokerError;
use livehub_core::presence::{
    Expired, Member, MemberPage, PresenceCount, PresenceStore, Removal, Scope, ScopeName,
};
use livehub_core::SessionId;
use redis::Value;

use crate::engine::RedisEngine;
use crate::keys::Keys;
use crate::scripts;

/// Members per `presence_add` call in a refresh.
const MEMBERS_PER_CALL: usize = 256;

/// Script calls per pipeline in a refresh or an expiry round.
const CALLS_PER_PIPELINE: usize = 64;

/// Scopes visited per expiry round, and members removed per scope per visit.
const SCOPES_PER_ROUND: usize = 256;
const MEMBERS_PER_VISIT: usize = 1000;

/// Expiry rounds per `expire` call at most (what is left waits for the next call).
const ROUNDS: usize = 16;

fn member_json(member: &Member) -> Result<Vec<u8>, BrokerError> {
    serde_json::to_vec(member)
        .map_err(|e| BrokerError::Engine(format!("a presence member does not encode: {e}")))
}

fn parse_member(bytes: &[u8]) -> Option<Member> {
    match serde_json::from_slice(bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "undecodable presence entry in redis: skipped");
            None
        }
    }
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn bad_reply(what: &str) -> BrokerError {
    BrokerError::Engine(format!("unexpected reply from redis to {what}"))
}

/// What one visit of a scope by `presence_expire` found.
struct Visit {
    /// The scope's next expiry (ms), `None` if it is empty.
    next: Option<f64>,
    /// Each member's JSON, and whether it was its user's last session.
    members: Vec<(Vec<u8>, bool)>,
}

fn parse_visit(v: Value) -> Option<Visit> {
    let Value::Array(items) = v else {
        return None;
    };
    let mut items = items.into_iter();
    let next = String::from_utf8(bytes_of(items.next()?)?).ok()?;
    let next: f64 = next.parse().ok()?;
    let mut members = Vec::new();
    while let (Some(m), Some(last)) = (items.next(), items.next()) {
        let last = matches!(last, Value::Int(1));
        if let Some(m) = bytes_of(m) {
            members.push((m, last));
        }
    }
    Some(Visit {
        next: (next >= 0.0).then_some(next),
        members,
    })
}

/// The most members a page may ask for in one script call (what `presence_page` is given).
const PAGE_MAX: usize = 10_000;

impl RedisEngine {
    /// How long after its node's last refresh a member of a node that died is gone, at most,
    /// provided some node still calls `expire` every refresh interval: presence ttl + refresh
    /// interval (40 s by default).
    pub fn presence_bound(&self) -> Duration {
        crate::engine::presence_bound(&self.shared().settings)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.shared().settings.presence_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// An `EVALSHA` of a presence script on scope `id`'s four keys (members, expiries,
    /// order, users).
    fn scope_call(&self, script: &redis::Script, id: &str) -> redis::Cmd {
        let keys = &self.shared().keys;
        let (pm, px) = (keys.presence_members(id), keys.presence_expiry(id));
        let (pl, pu) = (keys.presence_order(id), keys.presence_users(id));
        scripts::evalsha(script, &[&pm, &px, &pl, &pu])
    }

    /// Puts scope `id` in the index if it is not there (due at once: its first visit sets
    /// its next expiry). Always after the scope's own write: see `expire_round`.
    fn index_scope(&self, pipe: &mut redis::Pipeline, id: &str) {
        let index = self.shared().keys.presence_index();
        pipe.cmd("ZADD")
            .arg(index)
            .arg("NX")
            .arg(0)
            .arg(id)
            .ignore();
    }

    /// A `presence_expire` call for scope `id`, removing at most `limit` members.
    fn visit(&self, id: &str, limit: usize) -> redis::Cmd {
        let mut call = self.scope_call(&scripts::PRESENCE_EXPIRE, id);
        call.arg(limit);
        call
    }

    /// Visits due scopes once; `Ok(false)` when nothing more is due.
    async fn expire_round(&self, out: &mut Vec<Expired>) -> Result<bool, BrokerError> {
        let shared = self.shared();
        let index = shared.keys.presence_index();
        let mut due = scripts::evalsha(&scripts::PRESENCE_DUE, &[index]);
        due.arg(SCOPES_PER_ROUND);
        let mut pipe = redis::pipe();
        pipe.add_command(due);
        let (due,): (Vec<String>,) = shared.pipeline(&pipe).await?;
        if due.is_empty() {
            return Ok(false);
        }
        let mut follow = redis::pipe();
        // Scopes found empty: taken out of the index, then checked again (below).
        let mut emptied = Vec::new();
        for chunk in due.chunks(CALLS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.add_command(self.visit(id, MEMBERS_PER_VISIT));
            }
            let visits: Vec<Value> = shared.pipeline(&pipe).await?;
            if visits.len() != chunk.len() {
                return Err(bad_reply("a presence expiry"));
            }
            for (id, visit) in chunk.iter().zip(visits) {
                let Some(scope) = Keys::parse_scope_id(id) else {
                    tracing::warn!(id, "a presence index entry outside the layout: dropped");
                    follow.cmd("ZREM").arg(index).arg(id).ignore();
                    continue;
                };
                let visit = parse_visit(visit).ok_or_else(|| bad_reply("a presence expiry"))?;
                for (json, user_left) in &visit.members {
                    if let Some(member) = parse_member(json) {
                        out.push(Expired {
                            scope: scope.clone(),
                            member,
                            user_left: *user_left,
                        });
                    }
                }
                match visit.next {
                    Some(next) => {
                        follow.cmd("ZADD").arg(index).arg(next).arg(id).ignore();
                    }
                    None => {
                        follow.cmd("ZREM").arg(index).arg(id).ignore();
                        emptied.push(id.clone());
                    }
                }
            }
        }
        // A member added to an emptied scope after the check below also adds the scope to
        // the index itself (after its own write); one added before it is seen by the check.
        for id in &emptied {
            follow.add_command(self.visit(id, 0));
        }
        let replies: Vec<Value> = shared.pipeline(&follow).await?;
        let mut back = redis::pipe();
        for (id, reply) in emptied.iter().zip(replies) {
            if let Some(next) = parse_visit(reply).and_then(|v| v.next) {
                back.cmd("ZADD").arg(index).arg(next).arg(id).ignore();
            }
        }
        if back.cmd_iter().next().is_some() {
            shared.pipeline::<()>(&back).await?;
        }
        Ok(due.len() == SCOPES_PER_ROUND)
    }
}

#[async_trait]
impl PresenceStore for RedisEngine {
    fn refresh_interval(&self) -> Duration {
        self.shared().settings.presence_refresh
    }

    async fn add(&self, scope: Scope<'_>, member: &Member) -> Result<bool, BrokerError> {
        let id = Keys::scope_id(scope);
        let mut call = self.scope_call(&scripts::PRESENCE_ADD, &id);
        call.arg(self.ttl_ms())
            .arg(member.session.to_string())
            .arg(member_json(member)?);
        let mut pipe = redis::pipe();
        pipe.add_command(call);
        self.index_scope(&mut pipe, &id);
        let (firsts,): (Vec<i64>,) = self.shared().pipeline(&pipe).await?;
        Ok(firsts.first() == Some(&1))
    }

    async fn remove(&self, scope: Scope<'_>, session: SessionId) -> Result<Removal, BrokerError> {
        let mut call = self.scope_call(&scripts::PRESENCE_REMOVE, &Keys::scope_id(scope));
        call.arg(session.to_string());
        let mut pipe = redis::pipe();
        pipe.add_command(call);
        let (removed,): (i64,) = self.shared().pipeline(&pipe).await?;
        Ok(match removed {
            2 => Removal::User,
            1 => Removal::Session,
            _ => Removal::Absent,
        })
    }

    async fn members(&self, scope: Scope<'_>) -> Result<Vec<Member>, BrokerError> {
        let shared = self.shared();
        let pm = shared.keys.presence_members(&Keys::scope_id(scope));
        let mut pipe = redis::pipe();
        pipe.cmd("HVALS").arg(pm);
        let (values,): (Vec<Vec<u8>>,) = shared.pipeline(&pipe).await?;
        Ok(values.iter().filter_map(|v| parse_member(v)).collect())
    }

    async fn count(&self, scope: Scope<'_>) -> Result<PresenceCount, BrokerError> {
        let shared = self.shared();
        let id = Keys::scope_id(scope);
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN").arg(shared.keys.presence_members(&id));
        pipe.cmd("HLEN").arg(shared.keys.presence_users(&id));
        let (count, users): (u64, u64) = shared.pipeline(&pipe).await?;
        Ok(PresenceCount { count, users })
    }

    async fn page(
        &self,
        scope: Scope<'_>,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<MemberPage, BrokerError> {
        let shared = self.shared();
        let id = Keys::scope_id(scope);
        let (pm, pl) = (
            shared.keys.presence_members(&id),
            shared.keys.presence_order(&id),
        );
        let mut call = scripts::evalsha(&scripts::PRESENCE_PAGE, &[&pm, &pl]);
        call.arg(after.map(|a| a.to_string()).unwrap_or_default())
            .arg(limit.clamp(1, PAGE_MAX));
        let mut pipe = redis::pipe();
        pipe.add_command(call);
        let (reply,): (Value,) = shared.pipeline(&pipe).await?;
        let Value::Array(items) = reply else {
            return Err(bad_reply("a presence page"));
        };
        let mut items = items.into_iter();
        let more = matches!(items.next(), Some(Value::Int(1)));
        let last = items
            .next()
            .and_then(bytes_of)
            .ok_or_else(|| bad_reply("a presence page"))?;
        let members = items
            .filter_map(bytes_of)
            .filter_map(|v| parse_member(&v))
            .collect();
        // The cursor is the last id read, even if its entry was missing: the next page
        // starts after it, never again before.
        let cursor = more
            .then(|| String::from_utf8(last).ok())
            .flatten()
            .filter(|c| SessionId::parse(c).is_some());
        Ok(MemberPage { members, cursor })
    }

    async fn refresh(&self, members: &[(ScopeName, Member)]) -> Result<(), BrokerError> {
        let shared = self.shared();
        let mut by_scope: HashMap<&ScopeName, Vec<&Member>> = HashMap::new();
        for (scope, member) in members {
            by_scope.entry(scope).or_default().push(member);
        }
        let ttl = self.ttl_ms();
        let mut calls = 0;
        let mut pipe = redis::pipe();
        for (scope, members) in by_scope {
            let id = Keys::scope_id(scope.as_scope());
            for chunk in members.chunks(MEMBERS_PER_CALL) {
                let mut call = self.scope_call(&scripts::PRESENCE_ADD, &id);
                call.arg(ttl);
                for m in chunk {
                    call.arg(m.session.to_string()).arg(member_json(m)?);
                }
                pipe.add_command(call).ignore();
                calls += 1;
            }
            self.index_scope(&mut pipe, &id);
            if calls >= CALLS_PER_PIPELINE {
                shared.pipeline::<()>(&pipe).await?;
                pipe = redis::pipe();
                calls = 0;
            }
        }
        if pipe.cmd_iter().next().is_some() {
            shared.pipeline::<()>(&pipe).await?;
        }
        Ok(())
    }

    async fn expire(&self) -> Result<Vec<Expired>, BrokerError> {
        let mut out = Vec::new();
        for _ in 0..ROUNDS {
            match self.expire_round(&mut out).await {
                Ok(true) => {}
                Ok(false) => break,
                // Members already removed in Redis must reach the caller (their leaves):
                // an error after some were collected is only logged.
                Err(e) if !out.is_empty() => {
                    tracing::warn!(error = %e, "presence expiry stopped early");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
