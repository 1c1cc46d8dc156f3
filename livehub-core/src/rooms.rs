//! Rooms: server-managed groups of sessions, as in socket.io.
//!
//! A room exists on a node while that node has members in it. With several nodes, a node
//! hears the room's channel on the engine while it has members, and a send to a room goes to
//! the local members at once and to the other nodes as one control message, which each
//! delivers to its own members. A send to several rooms goes once to every node and reaches
//! each member once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::broker::Route;
use crate::error::{DisconnectReason, RoomError};
use crate::frame::{Frame, Scope, Shared};
use crate::node::{Control, Inner};
use crate::presence::{LocalPresence, ScopeName, Watchers};
use crate::session::{lock, SessionId, SessionState};
use crate::streams::ChannelKey;

/// One room: its local members.
pub(crate) struct Room {
    pub(crate) state: Mutex<RoomState>,
}

pub(crate) struct RoomState {
    pub(crate) members: HashMap<SessionId, Arc<SessionState>>,
    /// The members in session order and their users' session counts.
    pub(crate) presence: LocalPresence,
    dead: bool,
}

impl Inner {
    /// Adds a local session to a room (idempotent).
    pub(crate) async fn join_room(
        &self,
        s: &Arc<SessionState>,
        name: &str,
    ) -> Result<(), RoomError> {
        if !crate::names::valid_name(name, self.config.max_name_len) {
            return Err(RoomError::BadRoom);
        }
        {
            let m = lock(&s.membership);
            if m.closed {
                return Err(RoomError::NoSession);
            }
            if m.rooms.contains(name) {
                return Ok(());
            }
            if m.rooms.len() >= self.config.max_rooms_per_session {
                return Err(RoomError::TooManyRooms);
            }
        }
        let key: Arc<str> = Arc::from(name);
        // Hear the room's channel before counting as a member, so that nothing sent to the
        // room after the join can miss this node.
        self.engine_hold(ChannelKey::Room(key.clone()))
            .await
            .map_err(RoomError::Engine)?;
        let mut overflow = Vec::new();
        {
            let mut m = lock(&s.membership);
            if m.closed {
                drop(m);
                self.release_room_channel(&key);
                return Err(RoomError::NoSession);
            }
            if m.rooms.contains(name) {
                // Joined meanwhile: nothing to do.
            } else if m.rooms.len() >= self.config.max_rooms_per_session {
                drop(m);
                self.release_room_channel(&key);
                return Err(RoomError::TooManyRooms);
            } else {
                loop {
                    let room = self
                        .rooms
                        .entry(key.clone())
                        .or_insert_with(|| {
                            Arc::new(Room {
                                state: Mutex::new(RoomState {
                                    members: HashMap::new(),
                                    presence: LocalPresence::default(),
                                    dead: false,
                                }),
                            })
                        })
                        .clone();
                    let mut st = lock(&room.state);
                    if st.dead {
                        continue;
                    }
                    let member = s.member();
                    let first = st.presence.insert(&member);
                    // With a presence store, whether the user is new here is the store's answer.
                    let to = Watchers::sessions_and(first && self.presence_store.is_none());
                    if to.want(self.config.room_presence) {
                        let join = Shared::new(Frame::Presence {
                            join: true,
                            scope: Scope::Room(key.clone()),
                            member,
                        });
                        self.fan_out(st.members.values(), &join, &mut overflow);
                    }
                    st.members.insert(s.id, s.clone());
                    if self.clustered() {
                        // Under the room's lock: see the presence worker's refresh.
                        self.presence_worker.add(
                            self,
                            ScopeName::Room(name.to_owned()),
                            s.member(),
                        );
                    }
                    break;
                }
                m.rooms.insert(key.clone());
            }
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(())
    }

    /// Gives back a room channel taken for a join that did not happen.
    fn release_room_channel(&self, key: &Arc<str>) {
        if !self.rooms.contains_key(key) {
            self.engine_release(ChannelKey::Room(key.clone()));
        }
    }

    pub(crate) fn leave_room(&self, s: &Arc<SessionState>, name: &str) -> bool {
        let mut overflow = Vec::new();
        let was_member = {
            let mut m = lock(&s.membership);
            let was = m.rooms.remove(name);
            if was {
                self.remove_from_room(s, name, &mut overflow);
            }
            was
        };
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        was_member
    }

    pub(crate) fn remove_from_room(
        &self,
        s: &Arc<SessionState>,
        name: &str,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        let Some(room) = self.rooms.get(name).map(|r| r.clone()) else {
            return;
        };
        let was = {
            let mut st = lock(&room.state);
            let was = st.members.remove(&s.id).is_some();
            if was {
                let member = s.member();
                let last = st.presence.remove(&member);
                let to = Watchers::sessions_and(last && self.presence_store.is_none());
                if to.want(self.config.room_presence) {
                    let leave = Shared::new(Frame::Presence {
                        join: false,
                        scope: Scope::Room(Arc::from(name)),
                        member,
                    });
                    self.fan_out(st.members.values(), &leave, overflow);
                }
            }
            was
        };
        if was && self.clustered() {
            self.presence_worker
                .remove(self, ScopeName::Room(name.to_owned()), s.member());
        }
        let removed = self
            .rooms
            .remove_if(name, |_, r| {
                let mut st = lock(&r.state);
                let empty = st.members.is_empty();
                if empty {
                    st.dead = true;
                }
                empty
            })
            .is_some();
        if removed {
            self.engine_release(ChannelKey::Room(Arc::from(name)));
        }
    }

    /// The local members of a room.
    pub(crate) fn room_members_local(&self, name: &str) -> Vec<crate::presence::Member> {
        let Some(r) = self.rooms.get(name).map(|r| r.clone()) else {
            return Vec::new();
        };
        let st = lock(&r.state);
        st.members.values().map(|s| s.member()).collect()
    }

    /// Delivers an event to the local members of `rooms` (each session once), except `except`.
    pub(crate) fn emit_rooms_local(
        &self,
        rooms: &[impl AsRef<str>],
        except: &[SessionId],
        frame: &Arc<Shared>,
    ) -> usize {
        let mut overflow = Vec::new();
        let n = if let [room] = rooms {
            match self.rooms.get(room.as_ref()).map(|r| r.clone()) {
                Some(r) => {
                    let st = lock(&r.state);
                    let targets = st.members.values().filter(|s| !except.contains(&s.id));
                    self.fan_out(targets, frame, &mut overflow)
                }
                None => 0,
            }
        } else {
            let mut targets: HashMap<SessionId, Arc<SessionState>> = HashMap::new();
            for room in rooms {
                if let Some(r) = self.rooms.get(room.as_ref()).map(|r| r.clone()) {
                    let st = lock(&r.state);
                    for (id, s) in &st.members {
                        if !except.contains(id) {
                            targets.entry(*id).or_insert_with(|| s.clone());
                        }
                    }
                }
            }
            self.fan_out(targets.values(), frame, &mut overflow)
        };
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        n
    }

    /// Delivers an event to every local session.
    pub(crate) fn emit_all_local(&self, frame: &Arc<Shared>) -> usize {
        let targets: Vec<Arc<SessionState>> =
            self.sessions.iter().map(|e| e.value().clone()).collect();
        let mut overflow = Vec::new();
        let n = self.fan_out(targets.iter(), frame, &mut overflow);
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        n
    }

    /// An event for the members of `rooms` on every node. Returns the local deliveries.
    pub(crate) fn emit_rooms(
        &self,
        rooms: &[String],
        except: &[SessionId],
        event: &Arc<str>,
        data: &crate::codec::Payload,
    ) -> Result<usize, crate::broker::BrokerError> {
        let frame = Shared::new(Frame::Event {
            event: event.clone(),
            data: data.clone(),
            ack: None,
        });
        let n = self.emit_rooms_local(rooms, except, &frame);
        if self.clustered() {
            let route = match rooms {
                [room] => Route::Room(room),
                _ => Route::All,
            };
            self.send_control(
                route,
                Control::Rooms {
                    rooms: rooms.to_vec(),
                    except: except.iter().map(|s| s.as_u64()).collect(),
                    event: event.to_string(),
                    codec: Control::codec_tag(data),
                    data: data.as_bytes().to_vec(),
                },
            )?;
        }
        Ok(n)
    }

    /// A room's `join`/`leave` from another node (or, per user, from the store), for this
    /// node's members, if the hub's room presence events are among `to`. The member's own
    /// session gets none.
    pub(crate) fn room_presence_local(
        &self,
        join: bool,
        room: &str,
        member: crate::presence::Member,
        to: Watchers,
    ) {
        if !to.want(self.config.room_presence) {
            return;
        }
        let skip = member.session;
        let Some(r) = self.rooms.get(room).map(|r| r.clone()) else {
            return;
        };
        let frame = Shared::new(Frame::Presence {
            join,
            scope: Scope::Room(Arc::from(room)),
            member,
        });
        let mut overflow = Vec::new();
        {
            let st = lock(&r.state);
            let targets = st.members.values().filter(|s| s.id != skip);
            self.fan_out(targets, &frame, &mut overflow);
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
    }
}
