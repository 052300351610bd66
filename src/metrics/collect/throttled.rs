//! The per-tenant limit families: the 10 most throttled tenants and `other`, kept from one
//! scrape to the next (`ThrottledSplit`), and the limit events.
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Out;
use crate::limits::Counts;
use crate::metrics::tenants::{Rank, TenantRow, Tenants};

/// Tenants with a series of their own in the per-tenant throttling metrics.
const TOP_THROTTLED: usize = 10;
/// The class of every other tenant.
const OTHER: &str = "other";

/// Throttled transactions and their wait (µs): one tenant class's counters.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Throttled {
    count: u64,
    wait_us: u64,
}

/// How the throttled transactions split into the top tenants and `other`, kept from one
/// scrape to the next.
///
/// A listed tenant's series is its count since it took its counter in the throttled
/// sketch (exact from there on: the sketch's count less its `error_bound`), so it rises
/// while listed, and restarts (a counter reset to Prometheus) only if the tenant lost its
/// counter. `other` must not fall, or `rate()` would read a reset and count its whole
/// value again: so it is not `total − Σ listed` (that falls whenever a tenant enters the
/// top 10) but a counter of its own, advanced at each scrape by what the total rose less
/// what the tenants listed both then and now rose (as Prometheus reads them, resets
/// included). A tenant entering the list brings its past count as its first sample, which
/// `rate()` does not count; a tenant leaving it stops rising; either way the throttled
/// transactions of that interval count under `other`. So the increases of all the series
/// add up to the increase of the total, whoever is listed, with at most 11 series.
#[derive(Default)]
pub(super) struct ThrottledSplit {
    /// None before the first scrape.
    last: Option<SplitScrape>,
}

#[derive(Clone)]
struct SplitScrape {
    total: Throttled,
    listed: Vec<(Arc<str>, Throttled)>,
    other: Throttled,
}

impl ThrottledSplit {
    /// The series of this scrape from the throttled sketch's rows and the process total.
    fn next(&mut self, total: Throttled, rows: Vec<TenantRow>) -> SplitScrape {
        // Rank by the sketch's weight, merging the rows of one value in several colocation
        // groups (limits apply per value: one label value per tenant). The empty value and
        // a tenant named "other" count under other.
        let mut by_value: HashMap<Arc<str>, (u64, Throttled)> = HashMap::new();
        for r in rows {
            if r.tenant.is_empty() || &*r.tenant == OTHER {
                continue;
            }
            let e = by_value.entry(r.tenant).or_default();
            e.0 += r.throttled;
            e.1.count += r.throttled - r.error_bound;
            e.1.wait_us += r.throttle_wait_us;
        }
        let mut ranked: Vec<(Arc<str>, (u64, Throttled))> = by_value.into_iter().collect();
        ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(TOP_THROTTLED);
        let listed: Vec<(Arc<str>, Throttled)> =
            ranked.into_iter().map(|(v, (_, t))| (v, t)).collect();
        let other = match &self.last {
            None => Throttled {
                count: total
                    .count
                    .saturating_sub(listed.iter().map(|(_, t)| t.count).sum()),
                wait_us: total
                    .wait_us
                    .saturating_sub(listed.iter().map(|(_, t)| t.wait_us).sum()),
            },
            Some(last) => {
                // What rate() will count for the tenants listed both times.
                let rise = |now: u64, before: u64| if now >= before { now - before } else { now };
                let mut seen = Throttled::default();
                for (v, t) in &listed {
                    if let Some((_, b)) = last.listed.iter().find(|(w, _)| w == v) {
                        seen.count += rise(t.count, b.count);
                        seen.wait_us += rise(t.wait_us, b.wait_us);
                    }
                }
                let grew = |now: u64, before: u64, seen: u64| {
                    now.saturating_sub(before).saturating_sub(seen)
                };
                Throttled {
                    count: last.other.count + grew(total.count, last.total.count, seen.count),
                    wait_us: last.other.wait_us
                        + grew(total.wait_us, last.total.wait_us, seen.wait_us),
                }
            }
        };
        let now = SplitScrape {
            total,
            listed,
            other,
        };
        self.last = Some(now.clone());
        now
    }
}

/// The per-tenant limit metrics: throttled transactions and their wait by tenant class,
/// and the limit events.
pub(super) fn tenant_limits(
    out: &mut Out,
    tenants: &Tenants,
    counts: &Counts,
    split: &mut ThrottledSplit,
) {
    let (count, wait_us) = tenants.throttled_totals();
    let s = split.next(
        Throttled { count, wait_us },
        tenants.top(Rank::Throttled, usize::MAX),
    );
    let classes = s
        .listed
        .iter()
        .map(|(v, t)| (&**v, t))
        .chain([(OTHER, &s.other)]);
    for (tenant, t) in classes {
        out.counter("pgtenant_tenant_throttled_total", &[tenant], t.count);
        out.counter_f64(
            "pgtenant_tenant_throttle_wait_seconds_total",
            &[tenant],
            t.wait_us as f64 / 1e6,
        );
    }
    let r = Ordering::Relaxed;
    for (event, n) in [
        ("throttled_active", &counts.throttled_active),
        ("throttled_rate", &counts.throttled_rate),
        ("rate_refused", &counts.rate_refused),
        ("wait_timeout", &counts.wait_timeouts),
        ("statement_timeout", &counts.statement_timeouts),
    ] {
        out.counter("pgtenant_tenant_limit_events_total", &[event], n.load(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// The value of every series of family `name`, by its only label's value.
    fn series(out: &Out, name: &str) -> BTreeMap<String, f64> {
        let f = out
            .families
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("no family {name}"));
        f.get_metric()
            .iter()
            .map(|m| {
                assert_eq!(m.get_label().len(), 1, "{name}");
                let v = m.get_counter().get_value();
                (m.get_label()[0].value().to_string(), v)
            })
            .collect()
    }

    fn scrape(t: &Tenants, c: &Counts, split: &mut ThrottledSplit) -> Out {
        let mut out = Out::new();
        tenant_limits(&mut out, t, c, split);
        out
    }

    fn throttle(t: &Tenants, value: &str, n: u64, each: Duration) {
        let k = t.key(1, value, Arc::from("worker-1"));
        for _ in 0..n {
            t.throttled(&k, each);
        }
    }

    #[test]
    fn the_ten_most_throttled_tenants_and_other() {
        let (t, c, mut split) = (Tenants::default(), Counts::default(), Default::default());
        // Tenants 1 … 12 throttled 1 … 12 times, 1 ms each; a tenant whose value is
        // "other" 20 times (it counts under other, not as a second "other" series).
        for i in 1..=12u64 {
            throttle(&t, &i.to_string(), i, Duration::from_millis(1));
        }
        throttle(&t, "other", 20, Duration::from_millis(1));
        c.throttled_active.store(7, Ordering::Relaxed);
        c.statement_timeouts.store(2, Ordering::Relaxed);
        let out = scrape(&t, &c, &mut split);
        let n = series(&out, "pgtenant_tenant_throttled_total");
        let mut want: BTreeMap<String, f64> = (3..=12).map(|i| (i.to_string(), i as f64)).collect();
        want.insert("other".into(), (1 + 2 + 20) as f64);
        assert_eq!(n, want);
        let w = series(&out, "pgtenant_tenant_throttle_wait_seconds_total");
        assert_eq!(w.len(), 11);
        assert!((w["12"] - 0.012).abs() < 1e-9 && (w["other"] - 0.023).abs() < 1e-9);
        assert_eq!(
            series(&out, "pgtenant_tenant_limit_events_total"),
            BTreeMap::from([
                ("rate_refused".into(), 0.0),
                ("statement_timeout".into(), 2.0),
                ("throttled_active".into(), 7.0),
                ("throttled_rate".into(), 0.0),
                ("wait_timeout".into(), 0.0),
            ])
        );
        // Nothing throttled at all: other alone, at 0.
        let mut empty = ThrottledSplit::default();
        let out = scrape(&Tenants::default(), &c, &mut empty);
        let n = series(&out, "pgtenant_tenant_throttled_total");
        assert_eq!(n, BTreeMap::from([("other".into(), 0.0)]));
    }

    fn row(tenant: &str, throttled: u64, error_bound: u64) -> TenantRow {
        TenantRow {
            tenant: Arc::from(tenant),
            colocation: 1,
            node: Arc::from("worker-1"),
            statements: 0,
            time_us: 0,
            errors: 0,
            throttled,
            throttle_wait_us: 1_000 * (throttled - error_bound),
            error_bound,
        }
    }

    fn total(count: u64) -> Throttled {
        Throttled {
            count,
            wait_us: 1_000 * count,
        }
    }

    /// (tenant, count) of one scrape, other last.
    fn counts(s: &SplitScrape) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = s
            .listed
            .iter()
            .map(|(n, t)| (n.to_string(), t.count))
            .collect();
        v.push(("other".into(), s.other.count));
        v
    }

    #[test]
    fn other_never_falls_and_the_increases_add_up() {
        let mut split = ThrottledSplit::default();
        // Ten tenants of 100 each: all listed.
        let mut rows: Vec<TenantRow> = (0..10).map(|i| row(&format!("a{i}"), 100, 0)).collect();
        let s = split.next(total(1_000), rows.clone());
        assert_eq!(s.other, Throttled::default());
        // b, throttled 150 times in this interval, enters; a9 leaves with its 100. b's
        // series starts at 150 (a first sample: rate() counts nothing of it), so its 150
        // count under other this once; a9's past 100 do not come back as a jump of other.
        rows.pop();
        rows.push(row("b", 150, 0));
        let s = split.next(total(1_150), rows.clone());
        assert_eq!(s.listed[0], (Arc::from("b"), total(150)));
        assert_eq!(s.other, total(150));
        // b +10, a0 +5, and 3 for tenants not listed: other +3.
        rows[0] = row("a0", 105, 0);
        rows[9] = row("b", 160, 0);
        let s = split.next(total(1_168), rows.clone());
        assert_eq!(s.other, total(153));
        // b lost its counter and took one again (ranked by 104, 100 of them inherited):
        // its series restarts at its exact count, 4, which rate() reads as a reset and
        // counts; the other 16 of the interval's 20 go to other.
        rows[9] = row("b", 104, 100);
        let s = split.next(total(1_188), rows.clone());
        assert_eq!(
            counts(&s)[..2],
            [("a0".to_string(), 105), ("b".to_string(), 4)]
        );
        assert_eq!(s.other, total(169));
    }

    #[test]
    fn one_value_in_several_colocation_groups_is_one_series() {
        let mut split = ThrottledSplit::default();
        let mut second = row("42", 5, 0);
        second.colocation = 2;
        let s = split.next(total(12), vec![row("42", 7, 0), second, row("", 3, 0)]);
        assert_eq!(
            counts(&s),
            [("42".to_string(), 12), ("other".to_string(), 0)]
        );
    }
}
