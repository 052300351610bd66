-- pgtenant demo, emulated Citus: a worker keeps only the rows of the tenants whose shards it
-- owns (after schema.sql, data.sql and emulated-ranges.sql, in database app as role app).
-- A statement routed to the wrong worker misses rows. psql variables: group (1 or 2),
-- shard_count. The reference table plans keeps every row.
DELETE FROM accounts t WHERE NOT EXISTS (
    SELECT 1 FROM demo_ranges r
    WHERE r.groupid = :group AND hashint8(t.id) BETWEEN r.lo AND r.hi);
DELETE FROM orders t WHERE NOT EXISTS (
    SELECT 1 FROM demo_ranges r
    WHERE r.groupid = :group AND hashint8(t.account_id) BETWEEN r.lo AND r.hi);
DELETE FROM events t WHERE NOT EXISTS (
    SELECT 1 FROM demo_ranges r
    WHERE r.groupid = :group AND hashtext(t.tenant) BETWEEN r.lo AND r.hi);

-- As on a Citus worker, a bigint sequence hands out the node's own range
-- ((group << 48) + 1 …), so ids made on a worker never collide with other nodes'.
SELECT (:group::bigint << 48) + 1 AS seq_lo, (:group::bigint + 1) << 48 AS seq_hi \gset
ALTER SEQUENCE events_id_seq MINVALUE :seq_lo MAXVALUE :seq_hi START WITH :seq_lo RESTART;

VACUUM ANALYZE accounts, orders, events;
