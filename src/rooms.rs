//! Rooms: who hears a message.
//!
//! `ws://HOST/` is the lobby; `ws://HOST/rooms/NAME` joins room `NAME`. A
//! room exists while it has members (the lobby always), keeps its members'
//! slab keys in a list (a member knows its slot, so leaving is a swap
//! remove), and encodes this iteration's broadcasts into its own batch, so
//! fan-out visits only the members of rooms that have something to say:
//! a message costs its room, not the server.

use std::collections::HashMap;

use slab::Slab;

use crate::bus::RoomBus;
use crate::frame::{self, Frame};

/// A room's encoding buffer keeps its capacity across iterations up to
/// this much; a burst's larger buffer is given back, so quiet rooms hold
/// little.
const KEEP_BATCH_CAPACITY: usize = 4096;

/// The lobby's id: always there, never removed.
pub const LOBBY: u32 = 0;

/// One room.
struct Room {
    /// Its name (empty for the lobby).
    name: Box<str>,
    /// Slab keys of its members; a member's `slot` is its index here.
    members: Vec<usize>,
    /// This iteration's broadcasts to it, encoded one after another (each
    /// message is encoded once, straight into its room's batch).
    batch: Vec<u8>,
    /// Messages in `batch`.
    count: usize,
    /// Members that received this iteration's batch (for publish answers).
    recipients: u64,
    /// Its side of the Redis bus (untouched without one).
    bus: RoomBus,
}

/// A room that lost its last member, handed to the bus: its channel is
/// unsubscribed and its held publishes still go out.
pub struct Vacated {
    /// The room's name (empty for the lobby).
    pub name: Box<str>,
    /// Its bus state when it emptied.
    pub bus: RoomBus,
}

/// Every room, by id and by name.
pub struct Rooms {
    rooms: Slab<Room>,
    by_name: HashMap<Box<str>, u32>,
    /// Named rooms at most (`--max-rooms`).
    max: usize,
    /// Rooms whose batch is not empty, each once.
    dirty: Vec<u32>,
    /// Batch bytes across all rooms.
    pending: usize,
    /// Whether a bus follows the rooms: then rooms that gain their first
    /// member and rooms that lose their last are listed for it.
    tracked: bool,
    /// Rooms that gained their first member since the bus last looked.
    occupied: Vec<u32>,
    /// Rooms that lost their last member since the bus last looked.
    vacated: Vec<Vacated>,
}

impl Rooms {
    /// The lobby alone; at most `max` named rooms besides. `tracked`: a bus
    /// follows which rooms have members ([`Rooms::take_occupied`],
    /// [`Rooms::take_vacated`]).
    pub fn new(max: usize, tracked: bool) -> Self {
        let mut rooms = Slab::new();
        let lobby = rooms.insert(Room::new(""));
        debug_assert_eq!(lobby as u32, LOBBY);
        Rooms {
            rooms,
            by_name: HashMap::new(),
            max,
            dirty: Vec::new(),
            pending: 0,
            tracked,
            occupied: Vec::new(),
            vacated: Vec::new(),
        }
    }

    /// The id of room `name` (`None`: the lobby), if it exists.
    pub fn find(&self, name: Option<&str>) -> Option<u32> {
        match name {
            None => Some(LOBBY),
            Some(n) => self.by_name.get(n).copied(),
        }
    }

    /// Adds connection `key` to room `name` (`None`: the lobby), creating
    /// the room if needed; returns the room's id and the member's slot, or
    /// `None` at the room limit.
    pub fn join(&mut self, name: Option<&str>, key: usize) -> Option<(u32, u32)> {
        let id = match self.find(name) {
            Some(id) => id,
            None => {
                let name = name.unwrap_or_default();
                if self.by_name.len() >= self.max {
                    return None;
                }
                let id = self.rooms.insert(Room::new(name)) as u32;
                self.by_name.insert(name.into(), id);
                id
            }
        };
        let members = &mut self.rooms[id as usize].members;
        members.push(key);
        let slot = (members.len() - 1) as u32;
        if slot == 0 && self.tracked {
            self.occupied.push(id);
        }
        Some((id, slot))
    }

    /// Removes the member at `slot` of room `id`; returns the key of the
    /// member moved into that slot (its slot must be updated), if any. A
    /// named room left empty is removed.
    pub fn leave(&mut self, id: u32, slot: u32) -> Option<usize> {
        let room = &mut self.rooms[id as usize];
        room.members.swap_remove(slot as usize);
        let moved = room.members.get(slot as usize).copied();
        // Members leave in the end phase, after the fan-out emptied every
        // batch: nothing waits for a room removed here.
        debug_assert_eq!(room.count, 0);
        if room.members.is_empty() {
            if id != LOBBY {
                let room = self.rooms.remove(id as usize);
                self.by_name.remove(&room.name);
                if self.tracked {
                    self.vacated.push(Vacated {
                        name: room.name,
                        bus: room.bus,
                    });
                }
            } else if self.tracked {
                self.vacated.push(Vacated {
                    name: "".into(),
                    bus: std::mem::take(&mut room.bus),
                });
            }
        }
        moved
    }

    /// Encodes a message to room `id` into the room's batch: a final frame
    /// with `opcode` whose payload is `prefix` then `payload`.
    pub fn push(&mut self, id: u32, opcode: u8, prefix: &[u8], payload: &[u8]) {
        let room = &mut self.rooms[id as usize];
        if room.count == 0 {
            self.dirty.push(id);
        }
        let before = room.batch.len();
        let len = prefix.len() + payload.len();
        room.batch.reserve(frame::header_len(len) + len);
        frame::write_header(&mut room.batch, opcode, len);
        room.batch.extend_from_slice(prefix);
        room.batch.extend_from_slice(payload);
        room.count += 1;
        self.pending += room.batch.len() - before;
    }

    /// Appends a frame already encoded (a publish body, encoded while its
    /// request is parsed) to room `id`'s batch.
    pub fn push_encoded(&mut self, id: u32, encoded: &[u8]) {
        let room = &mut self.rooms[id as usize];
        if room.count == 0 {
            self.dirty.push(id);
        }
        room.batch.extend_from_slice(encoded);
        room.count += 1;
        self.pending += encoded.len();
    }

    /// Batch bytes across all rooms: what this iteration will fan out.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether any room has a broadcast waiting.
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes the rooms with broadcasts waiting, into `into` (cleared first).
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut self.dirty, into);
    }

    /// Room `id`'s broadcasts as one shared frame (the one copy and
    /// allocation of this iteration's messages to it), with their count;
    /// its batch is emptied.
    pub fn take_batch(&mut self, id: u32) -> (Frame, usize) {
        let room = &mut self.rooms[id as usize];
        let batch = Frame::from_bytes(&room.batch);
        let count = std::mem::take(&mut room.count);
        self.pending -= room.batch.len();
        room.batch.clear();
        if room.batch.capacity() > KEEP_BATCH_CAPACITY {
            room.batch = Vec::new();
        }
        (batch, count)
    }

    /// Room `id`'s name (empty for the lobby).
    pub fn name(&self, id: u32) -> &str {
        &self.rooms[id as usize].name
    }

    /// Room `id`'s name and bus state.
    pub fn bus_mut(&mut self, id: u32) -> (&str, &mut RoomBus) {
        let room = &mut self.rooms[id as usize];
        (&room.name, &mut room.bus)
    }

    /// Room `id`'s bus state, if it has members.
    pub fn bus(&self, id: u32) -> Option<&RoomBus> {
        self.rooms
            .get(id as usize)
            .filter(|r| !r.members.is_empty())
            .map(|r| &r.bus)
    }

    /// Every room with members: id, name and bus state.
    pub fn each_bus_mut(&mut self) -> impl Iterator<Item = (u32, &str, &mut RoomBus)> {
        self.rooms
            .iter_mut()
            .filter(|(_, r)| !r.members.is_empty())
            .map(|(id, r)| (id as u32, &*r.name, &mut r.bus))
    }

    /// Takes the rooms that gained their first member, into `into`
    /// (cleared first). One may have emptied again since.
    pub fn take_occupied(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(&mut self.occupied, into);
    }

    /// Takes the rooms that lost their last member.
    pub fn take_vacated(&mut self) -> std::vec::Drain<'_, Vacated> {
        self.vacated.drain(..)
    }

    /// Whether room `id` has members.
    pub fn is_occupied(&self, id: u32) -> bool {
        self.rooms
            .get(id as usize)
            .is_some_and(|r| !r.members.is_empty())
    }

    /// Room `id`'s members.
    pub fn members(&self, id: u32) -> &[usize] {
        &self.rooms[id as usize].members
    }

    /// Records how many members received room `id`'s batch.
    pub fn set_recipients(&mut self, id: u32, n: u64) {
        self.rooms[id as usize].recipients = n;
    }

    /// Members that received room `id`'s last batch (0 if it is gone).
    pub fn recipients(&self, id: u32) -> u64 {
        self.rooms.get(id as usize).map_or(0, |r| r.recipients)
    }

    /// Rooms with members (the lobby counts when it has some).
    pub fn len(&self) -> usize {
        self.rooms
            .iter()
            .filter(|(_, r)| !r.members.is_empty())
            .count()
    }

    /// The member count of every room with members.
    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.rooms
            .iter()
            .map(|(_, r)| r.members.len())
            .filter(|&n| n > 0)
    }
}

impl Room {
    fn new(name: &str) -> Self {
        Room {
            name: name.into(),
            members: Vec::new(),
            batch: Vec::new(),
            count: 0,
            recipients: 0,
            bus: RoomBus::default(),
        }
    }
}
