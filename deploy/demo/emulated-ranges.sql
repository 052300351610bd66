-- pgtenant demo: the hash ranges of :shard_count shards, exactly as Citus creates them
-- (step = 2^32 / shard_count; min_i = INT32_MIN + i * step; max_i = min_i + step - 1; the
-- last max is INT32_MAX). Shard i is placed on node group 1 + i % 2 (round robin over the
-- two workers, as Citus places them). A session-local view for the emulated-*.sql files.
CREATE TEMP VIEW demo_ranges AS
SELECT i,
       (-2147483648 + i * s.step)::int AS lo,
       (CASE WHEN i = :shard_count - 1 THEN 2147483647
             ELSE -2147483648 + (i + 1) * s.step - 1 END)::int AS hi,
       1 + i % 2 AS groupid
FROM (SELECT (1::bigint << 32) / :shard_count AS step) AS s,
     generate_series(0, :shard_count - 1) AS i;
