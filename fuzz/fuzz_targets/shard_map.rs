//! citus/shard_map.rs: `build` a shard map from arbitrary catalog rows (as the four
//! catalog queries return them: text columns, NULLs), then `locate`.
//! Properties: `build` never panics; in a map it builds, every shard range points at a
//! node of the map, ranges are sorted and unique per group, node groups are unique and
//! metadata workers are workers of the map; `locate` only returns a range of the asked
//! group that holds the hash, and the node of the map that range names; and when a
//! group's ranges are well-formed (min <= max, disjoint), every hash they cover is found.
#![no_main]
use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgtenant::citus::shard_map::{build, NodeResolver};
use pgtenant::pool::Node;

#[derive(Arbitrary, Debug, Clone)]
enum Cell {
    Null,
    Small(u8),
    Int(i32),
    Big(i64),
    Kind(u8),
    Bool(bool),
    Text(String),
}

impl Cell {
    fn text(&self) -> Option<String> {
        Some(match self {
            Cell::Null => return None,
            Cell::Small(v) => (v % 8).to_string(),
            Cell::Int(v) => v.to_string(),
            Cell::Big(v) => v.to_string(),
            Cell::Kind(k) => {
                ["h", "n", "a", "r", "23", "20", "25", "2950"][usize::from(k % 8)].to_string()
            }
            Cell::Bool(b) => b.to_string(),
            Cell::Text(s) => s.clone(),
        })
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    tables: Vec<Vec<Cell>>,
    seqs: Vec<Vec<Cell>>,
    shards: Vec<Vec<Cell>>,
    nodes: Vec<Vec<Cell>>,
    rewrites: Vec<(String, String)>,
    probes: Vec<(u8, i32)>,
}

fn rows(r: &[Vec<Cell>]) -> Vec<Vec<Option<String>>> {
    r.iter()
        .take(64)
        .map(|row| row.iter().take(8).map(Cell::text).collect())
        .collect()
}

fuzz_target!(|input: Input| {
    let rewrites: BTreeMap<String, String> = input.rewrites.iter().cloned().collect();
    let coordinator = Node {
        name: "coordinator".into(),
        host: "127.0.0.1".into(),
        port: 5432,
    };
    let resolver = NodeResolver {
        rewrites: &rewrites,
        coordinator: &coordinator,
        worker_prefix: "worker-",
    };
    let Ok(map) = build(
        1,
        "fp".into(),
        &rows(&input.tables),
        &rows(&input.seqs),
        &rows(&input.shards),
        &rows(&input.nodes),
        &resolver,
    ) else {
        return;
    };
    let mut groups_seen = std::collections::HashSet::new();
    for (g, _) in &map.nodes {
        assert!(groups_seen.insert(*g), "node group {g} twice");
    }
    for w in &map.metadata_workers {
        assert!(
            map.nodes.iter().any(|(g, n)| *g != 0 && n == w),
            "metadata worker {w:?} not a worker"
        );
    }
    let mut probes: Vec<(u32, i32)> = Vec::new();
    for (c, ranges) in &map.groups {
        assert!(
            ranges.windows(2).all(|w| w[0].min <= w[1].min),
            "ranges not sorted"
        );
        let mut seen = std::collections::HashSet::new();
        for r in ranges {
            assert!(r.node < map.nodes.len(), "range {r:?} names no node");
            assert!(seen.insert((r.min, r.max)), "range {r:?} twice");
            for h in [r.min, r.max, r.min.wrapping_add(1), r.max.wrapping_sub(1)] {
                probes.push((*c, h));
            }
        }
    }
    let colocations: Vec<u32> = map.groups.keys().copied().collect();
    for (c, h) in &input.probes {
        let c = colocations
            .get(usize::from(*c))
            .copied()
            .unwrap_or(u32::from(*c));
        probes.push((c, *h));
    }
    for (c, h) in probes {
        let ranges = map.groups.get(&c);
        match map.locate(c, h) {
            Some((r, n)) => {
                assert!(r.min <= h && h <= r.max, "locate({c}, {h}) gave {r:?}");
                assert!(
                    ranges.is_some_and(|rs| rs.contains(r)),
                    "range of another group"
                );
                assert_eq!(&map.nodes[r.node].1, n, "node is not the range's");
            }
            None => {
                let Some(rs) = ranges else { continue };
                let well_formed =
                    rs.iter().all(|r| r.min <= r.max) && rs.windows(2).all(|w| w[0].max < w[1].min);
                if well_formed {
                    assert!(
                        !rs.iter().any(|r| r.min <= h && h <= r.max),
                        "locate({c}, {h}) found nothing, but a range holds it: {rs:?}"
                    );
                }
            }
        }
    }
});
