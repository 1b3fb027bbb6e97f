//! Allocation policies: where an instance goes and how many a pool needs. Pure
//! functions over plain numbers, so they are the same whoever calls them (the
//! store inside a transaction, the reconciler) and are tested without I/O. This is
//! the pluggable part of the provider model: a deployment changes these numbers or
//! these functions, not the callers.

use uuid::Uuid;

/// The knobs of the default policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Instances kept beyond what the demand needs, so one failure never drops a
    /// pool below it.
    pub spares: u32,
    /// Most tenants (accounts) a shared pool takes before a new one is opened.
    pub max_tenants_per_shared_pool: i64,
    /// Upgrade domains instances are spread over (rolled one at a time).
    pub upgrade_domains: i32,
}

impl Policy {
    pub const DEFAULT: Policy = Policy { spares: 1, max_tenants_per_shared_pool: 100, upgrade_domains: 2 };

    /// Instances a dedicated pool needs to carry `demand` when each carries
    /// `per_instance`: enough to carry it, plus the spares.
    pub fn instances_for(&self, demand: u32, per_instance: u32) -> u32 {
        demand.div_ceil(per_instance.max(1)) + self.spares
    }

    /// The shared pool a new tenant joins: the least loaded with room, preferring
    /// pools that already have a ready instance; `None` means open a new pool.
    pub fn pick_shared_pool(&self, pools: &[SharedPoolLoad]) -> Option<Uuid> {
        pools
            .iter()
            .filter(|p| p.tenants < self.max_tenants_per_shared_pool)
            .min_by_key(|p| (p.ready_instances == 0, p.tenants, p.id))
            .map(|p| p.id)
    }

    /// The upgrade domain for a new instance: the least used among `in_use` (the
    /// domains of the pool's live instances), lowest first on a tie.
    pub fn upgrade_domain(&self, in_use: &[i32]) -> i32 {
        (0..self.upgrade_domains.max(1)).min_by_key(|d| (in_use.iter().filter(|u| *u == d).count(), *d)).unwrap_or(0)
    }
}

/// A place an instance may go, as the policy sees it: only places that take new
/// instances are offered, each with the room its quotas leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room<'a> {
    pub name: &'a str,
    pub zone: &'a str,
    /// Instances it may still take (`None`: no limit).
    pub free_instances: Option<i64>,
    /// Capacity it may still take, in the caller's unit (`None`: no limit).
    pub free_capacity: Option<i64>,
}

impl Room<'_> {
    fn takes(&self, size: i64) -> bool {
        self.free_instances.is_none_or(|n| n > 0) && self.free_capacity.is_none_or(|c| c >= size)
    }
}

impl Policy {
    /// Where a new instance of `size` in upgrade domain `domain` goes, given the
    /// zones and domains of the pool's live instances (`pool`): a place with room,
    /// in the zone holding the fewest of the pool's instances (so a zone lost takes
    /// the smallest share), then the zone already holding that upgrade domain (so a
    /// domain, rolled at once, stays in one zone and domains spread over zones),
    /// then the place with the most room, then by name. `None`: nowhere has room.
    pub fn place<'a>(&self, rooms: &[Room<'a>], size: i64, domain: i32, pool: &[(&str, i32)]) -> Option<&'a str> {
        rooms
            .iter()
            .filter(|r| r.takes(size))
            .min_by_key(|r| {
                let in_zone = pool.iter().filter(|(z, _)| *z == r.zone).count();
                let domain_elsewhere = !pool.iter().any(|(z, d)| *z == r.zone && *d == domain);
                let room = std::cmp::Reverse(r.free_instances.unwrap_or(i64::MAX));
                (in_zone, domain_elsewhere, room, r.name)
            })
            .map(|r| r.name)
    }
}

/// A shared pool as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedPoolLoad {
    pub id: Uuid,
    pub tenants: i64,
    pub ready_instances: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy::DEFAULT;

    #[test]
    fn dedicated_pools_carry_the_demand_plus_a_spare() {
        assert_eq!(P.instances_for(300, 100), 4);
        assert_eq!(P.instances_for(250, 100), 4);
        assert_eq!(P.instances_for(100, 1000), 2);
        assert_eq!(Policy { spares: 0, ..P }.instances_for(300, 100), 3);
    }

    #[test]
    fn tenants_join_the_least_loaded_shared_pool_with_room() {
        let a = SharedPoolLoad { id: Uuid::from_u128(1), tenants: 10, ready_instances: 2 };
        let b = SharedPoolLoad { id: Uuid::from_u128(2), tenants: 3, ready_instances: 2 };
        let full = SharedPoolLoad { id: Uuid::from_u128(3), tenants: 100, ready_instances: 2 };
        let cold = SharedPoolLoad { id: Uuid::from_u128(4), tenants: 0, ready_instances: 0 };
        assert_eq!(P.pick_shared_pool(&[a, b, full]), Some(b.id));
        assert_eq!(P.pick_shared_pool(&[a, cold]), Some(a.id), "a pool that serves beats an empty one that does not");
        assert_eq!(P.pick_shared_pool(&[cold]), Some(cold.id));
        assert_eq!(P.pick_shared_pool(&[full]), None, "no room: open a new pool");
        assert_eq!(P.pick_shared_pool(&[]), None);
    }

    #[test]
    fn instances_spread_over_zones_one_upgrade_domain_per_zone() {
        let rooms = [
            Room { name: "a1", zone: "a", free_instances: None, free_capacity: None },
            Room { name: "b1", zone: "b", free_instances: None, free_capacity: None },
        ];
        // Four instances in domains 0, 1, 0, 1 (as `upgrade_domain` hands them out).
        let mut pool: Vec<(&str, i32)> = vec![];
        for domain in [0, 1, 0, 1] {
            let name = P.place(&rooms, 100, domain, &pool).unwrap();
            pool.push((if name == "a1" { "a" } else { "b" }, domain));
        }
        assert_eq!(pool, [("a", 0), ("b", 1), ("a", 0), ("b", 1)]);
        // A surge during an upgrade of domain 0 joins domain 0's zone.
        assert_eq!(P.place(&rooms, 100, 0, &pool), Some("a1"));
        assert_eq!(P.place(&rooms, 100, 1, &pool), Some("b1"));
    }

    #[test]
    fn places_are_held_to_their_quotas() {
        let full = Room { name: "full", zone: "a", free_instances: Some(0), free_capacity: None };
        let small = Room { name: "small", zone: "b", free_instances: Some(5), free_capacity: Some(50) };
        let roomy = Room { name: "roomy", zone: "c", free_instances: Some(9), free_capacity: Some(1000) };
        assert_eq!(P.place(&[full, small], 100, 0, &[]), None, "no room anywhere");
        assert_eq!(P.place(&[full, small], 50, 0, &[]), Some("small"), "exactly the capacity left fits");
        assert_eq!(P.place(&[small, roomy], 50, 0, &[]), Some("roomy"), "the most room first");
        // One zone with two places: the zone is filled evenly with the other zone.
        let a2 = Room { name: "a2", zone: "a", free_instances: None, free_capacity: None };
        let b = Room { name: "b", zone: "b", free_instances: None, free_capacity: None };
        assert_eq!(P.place(&[a2, b], 10, 1, &[("a", 0)]), Some("b"));
        assert_eq!(P.place(&[], 10, 0, &[]), None);
    }

    #[test]
    fn instances_are_spread_over_upgrade_domains() {
        assert_eq!(P.upgrade_domain(&[]), 0);
        assert_eq!(P.upgrade_domain(&[0]), 1);
        assert_eq!(P.upgrade_domain(&[0, 1]), 0);
        assert_eq!(P.upgrade_domain(&[0, 0, 1]), 1);
        assert_eq!(Policy { upgrade_domains: 3, ..P }.upgrade_domain(&[0, 1]), 2);
    }
}
