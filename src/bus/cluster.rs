//! `--redis-cluster`: which master owns each channel's hash slot.
//!
//! Sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`, Redis 7) keeps a channel's
//! messages on the shard that owns its slot, where classic `PUBLISH` copies
//! every message to every node of the cluster. So each room's channel is
//! published and subscribed on its slot's master. The slot map comes from
//! `CLUSTER SLOTS`, asked of the seeds in turn whenever the bus connects;
//! a `MOVED` reply, or a shard dropping a subscription (its slot migrated),
//! takes the bus down and back up with a fresh map.

use std::net::{IpAddr, SocketAddr};

use redis_protocol::resp2::types::RangeFrame;

use super::link::Link;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// A range of slots (first, last) and the master that owns it.
pub(super) type SlotRange = (u16, u16, SocketAddr);

/// A slot no master owns.
const UNOWNED: u16 = u16::MAX;

/// The cluster's seeds, its slot map, and the socket that asks for it.
pub(super) struct Cluster {
    /// The addresses given on the command line, asked in turn.
    pub seeds: Vec<SocketAddr>,
    /// The seed to ask next.
    pub next_seed: usize,
    /// Server index by slot.
    slots: Vec<u16>,
    /// The connection to the seed being asked.
    pub probe: Link,
    /// The seed being asked.
    pub asking: SocketAddr,
}

impl Cluster {
    pub fn new(seeds: Vec<SocketAddr>, probe: Link) -> Self {
        Cluster {
            asking: seeds[0],
            seeds,
            next_seed: 0,
            slots: vec![UNOWNED; SLOTS],
            probe,
        }
    }

    /// The server that owns `slot`, if the map has one.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.slots[slot as usize] {
            UNOWNED => None,
            i => Some(i as usize),
        }
    }

    /// Adopts the masters of a `CLUSTER SLOTS` reply: returns their
    /// addresses, in server-index order. More than `max` masters is an
    /// error, and leaves the map as it was.
    pub fn adopt(&mut self, ranges: &[SlotRange], max: usize) -> Result<Vec<SocketAddr>, String> {
        let mut masters: Vec<SocketAddr> = Vec::new();
        for &(_, _, addr) in ranges {
            if !masters.contains(&addr) {
                masters.push(addr);
            }
        }
        if masters.len() > max {
            return Err(format!(
                "{} masters: herald talks to {max} at most",
                masters.len()
            ));
        }
        self.slots.fill(UNOWNED);
        for &(start, end, addr) in ranges {
            let i = masters
                .iter()
                .position(|&m| m == addr)
                .expect("listed above");
            for slot in start..=end.min(SLOTS as u16 - 1) {
                self.slots[slot as usize] = i as u16;
            }
        }
        Ok(masters)
    }
}

/// The slot ranges and their masters in a `CLUSTER SLOTS` reply (`buf`:
/// the reply's bytes, which `frame`'s ranges index). A master announced
/// with an empty address is the seed that answered (`seed`).
pub(super) fn parse_slots(
    buf: &[u8],
    frame: &RangeFrame,
    seed: IpAddr,
) -> Result<Vec<SlotRange>, String> {
    let bad = || "an unreadable CLUSTER SLOTS reply".to_string();
    let RangeFrame::Array(ranges) = frame else {
        return match frame {
            RangeFrame::Error((a, b)) => Err(format!(
                "CLUSTER SLOTS refused: {}",
                String::from_utf8_lossy(&buf[*a..*b])
            )),
            _ => Err(bad()),
        };
    };
    let int = |f: &RangeFrame| match f {
        RangeFrame::Integer(n) => Some(*n),
        _ => None,
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let RangeFrame::Array(parts) = r else {
            return Err(bad());
        };
        let (Some(start), Some(end), Some(RangeFrame::Array(master))) = (
            parts.first().and_then(int),
            parts.get(1).and_then(int),
            parts.get(2),
        ) else {
            return Err(bad());
        };
        let ip = match master.first() {
            Some(RangeFrame::BulkString((a, b))) => &buf[*a..*b],
            _ => return Err(bad()),
        };
        let port = master.get(1).and_then(int).ok_or_else(bad)?;
        let ip: IpAddr = if ip.is_empty() {
            seed
        } else {
            std::str::from_utf8(ip)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    format!(
                        "a master announced as {:?}: herald needs IP addresses \
                         (cluster-announce-ip)",
                        String::from_utf8_lossy(ip)
                    )
                })?
        };
        let valid = |n: i64| (0..SLOTS as i64).contains(&n);
        if !valid(start) || !valid(end) || start > end || !(1..=65535).contains(&port) {
            return Err(bad());
        }
        out.push((start as u16, end as u16, SocketAddr::new(ip, port as u16)));
    }
    if out.is_empty() {
        return Err("the cluster has no slots assigned".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::decode::decode_range;

    #[test]
    fn a_cluster_slots_reply_maps_every_slot_to_its_master() {
        let reply = b"*3\r\n\
            *3\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n\
            *4\r\n:5461\r\n:10922\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7004\r\n$2\r\nid\r\n\
            *3\r\n:10923\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$2\r\nid\r\n";
        let (frame, used) = decode_range(reply).unwrap().unwrap();
        assert_eq!(used, reply.len());
        let seed: IpAddr = "127.0.0.2".parse().unwrap();
        let ranges = parse_slots(reply, &frame, seed).unwrap();
        assert_eq!(ranges.len(), 3);
        // An empty address is the seed's; replicas are not masters.
        assert_eq!(ranges[1].2, "127.0.0.2:7001".parse().unwrap());
        let mut c = Cluster::new(
            vec!["127.0.0.1:7000".parse().unwrap()],
            Link::new(mio::Token(0), false),
        );
        let masters = c.adopt(&ranges, 3).unwrap();
        assert_eq!(masters.len(), 3);
        assert!(c.adopt(&ranges, 2).is_err(), "over the limit");
        assert_eq!(c.owner(16383), Some(2), "a refused map leaves the old one");
        assert_eq!(c.owner(0), Some(0));
        assert_eq!(c.owner(5461), Some(1));
        assert_eq!(c.owner(16383), Some(2));
    }

    #[test]
    fn a_refusal_or_a_hole_is_an_error_not_a_map() {
        let err = b"-ERR This instance has cluster support disabled\r\n";
        let (frame, _) = decode_range(err).unwrap().unwrap();
        let e = parse_slots(err, &frame, "127.0.0.1".parse().unwrap()).unwrap_err();
        assert!(e.contains("cluster support disabled"), "{e}");
        let empty = b"*0\r\n";
        let (frame, _) = decode_range(empty).unwrap().unwrap();
        assert!(parse_slots(empty, &frame, "127.0.0.1".parse().unwrap()).is_err());
    }
}
