-- pgtenant demo: sample rows for :tenants tenants (psql variable, e.g. -v tenants=1000).
--
-- Loaded in full on the coordinator (emulated Citus: it holds every row; real Citus: it
-- spreads them over the shards). emulated-worker.sql then keeps, on each worker, only the
-- rows of the tenants whose shards that worker owns.
INSERT INTO plans
SELECT p, (ARRAY['free', 'basic', 'team', 'business', 'enterprise'])[p]
FROM generate_series(1, 5) AS p;

INSERT INTO accounts
SELECT a, 'account ' || a, 1 + a % 5
FROM generate_series(1, :tenants) AS a;

-- 3 orders per account.
INSERT INTO orders
SELECT a, o, a * 10 + o, 'order ' || o || ' of account ' || a
FROM generate_series(1, :tenants) AS a, generate_series(1, 3) AS o;

-- Text tenants 'tenant-1' … 'tenant-N', 3 events each.
INSERT INTO events (tenant, id, payload)
SELECT 'tenant-' || a, (a - 1) * 3 + k, 'event ' || k || ' of tenant-' || a
FROM generate_series(1, :tenants) AS a, generate_series(1, 3) AS k;
SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events)) \g /dev/null
