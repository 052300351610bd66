-- pgtenant demo, emulated Citus: the coordinator's catalog (after schema.sql, data.sql and
-- emulated-ranges.sql, in database app as role app).
--
-- Plain PostgreSQL has no Citus, so the coordinator carries tables with the exact names and
-- columns of the Citus catalog, in schema public, and the function column_to_column_name,
-- filled the way tests/support/citus.rs fills them. pgtenant reads them with the same
-- (unqualified) queries it runs against a real Citus coordinator, whose catalog lives in
-- pg_catalog. psql variables: coordinator_port, worker1_port, worker2_port, shard_count.
CREATE TABLE pg_dist_partition (
    logicalrelid regclass NOT NULL PRIMARY KEY,
    partmethod "char" NOT NULL,
    partkey text,
    colocationid integer NOT NULL DEFAULT 0,
    repmodel "char" NOT NULL DEFAULT 'c'
);
CREATE TABLE pg_dist_shard (
    logicalrelid regclass NOT NULL,
    shardid bigint NOT NULL PRIMARY KEY,
    shardstorage "char" NOT NULL,
    shardminvalue text,
    shardmaxvalue text
);
CREATE TABLE pg_dist_placement (
    placementid bigint NOT NULL PRIMARY KEY,
    shardid bigint NOT NULL,
    shardstate integer NOT NULL,
    shardlength bigint NOT NULL,
    groupid integer NOT NULL
);
CREATE TABLE pg_dist_node (
    nodeid integer NOT NULL PRIMARY KEY,
    groupid integer NOT NULL,
    nodename text NOT NULL,
    nodeport integer NOT NULL DEFAULT 5432,
    noderack text NOT NULL DEFAULT 'default',
    hasmetadata boolean NOT NULL DEFAULT false,
    isactive boolean NOT NULL DEFAULT true,
    noderole text NOT NULL DEFAULT 'primary'
        CHECK (noderole IN ('primary', 'secondary', 'unavailable')),
    nodecluster name NOT NULL DEFAULT 'default',
    metadatasynced boolean DEFAULT false,
    shouldhaveshards boolean NOT NULL DEFAULT true
);
CREATE TABLE pg_dist_colocation (
    colocationid integer NOT NULL PRIMARY KEY,
    shardcount integer NOT NULL,
    replicationfactor integer NOT NULL,
    distributioncolumntype oid NOT NULL,
    distributioncolumncollation oid NOT NULL
);
-- partkey is a serialized Var node; its varattno names the column.
CREATE FUNCTION column_to_column_name(table_name regclass, column_var_text text)
RETURNS text LANGUAGE sql STABLE STRICT AS $$
    SELECT a.attname::text FROM pg_attribute a
    WHERE a.attrelid = table_name
      AND a.attnum = substring(column_var_text FROM ':varattno (-?[0-9]+)')::int2
      AND NOT a.attisdropped
$$;

-- Nodes: the coordinator is group 0 and has no shards; the workers are groups 1 and 2.
INSERT INTO pg_dist_node VALUES
    (1, 0, '127.0.0.1', :coordinator_port, 'default', true, true, 'primary', 'default', true, false),
    (2, 1, '127.0.0.1', :worker1_port, 'default', true, true, 'primary', 'default', true, true),
    (3, 2, '127.0.0.1', :worker2_port, 'default', true, true, 'primary', 'default', true, true);

-- Colocation groups: 1 = bigint (int8, oid 20), 2 = text (oid 25, default collation 100),
-- 3 = the reference table.
INSERT INTO pg_dist_colocation VALUES
    (1, :shard_count, 1, 20, 0),
    (2, :shard_count, 1, 25, 100),
    (3, 1, -1, 0, 0);

-- The distributed tables, in creation order (shard ids are handed out in this order).
CREATE TEMP TABLE demo_distributed (ord int, rel text, col text, colocationid int);
INSERT INTO demo_distributed VALUES
    (0, 'accounts', 'id', 1),
    (1, 'orders', 'account_id', 1),
    (2, 'events', 'tenant', 2);

INSERT INTO pg_dist_partition
SELECT a.attrelid, 'h',
       format('{VAR :varno 1 :varattno %s :vartype %s :vartypmod %s :varcollid %s '
              ':varlevelsup 0 :varnosyn 1 :varattnosyn %s :location -1}',
              a.attnum, a.atttypid, a.atttypmod, a.attcollation, a.attnum),
       d.colocationid, 's'
FROM demo_distributed d
JOIN pg_attribute a ON a.attrelid = ('public.' || d.rel)::regclass AND a.attname = d.col
ORDER BY d.ord;
INSERT INTO pg_dist_partition VALUES ('public.plans'::regclass, 'n', NULL, 3, 't');

-- Shards: ids from 102008 as in a fresh Citus cluster, one range per shard.
INSERT INTO pg_dist_shard
SELECT ('public.' || d.rel)::regclass, 102008 + d.ord * :shard_count + r.i, 't', r.lo::text, r.hi::text
FROM demo_distributed d CROSS JOIN demo_ranges r
ORDER BY d.ord, r.i;
INSERT INTO pg_dist_shard VALUES ('public.plans'::regclass, 102008 + 3 * :shard_count, 't', NULL, NULL);

-- Placements: shard i on group 1 + i % 2; the reference shard on every node.
INSERT INTO pg_dist_placement
SELECT row_number() OVER (ORDER BY shardid, groupid), shardid, 1, 0, groupid
FROM (
    SELECT 102008 + d.ord * :shard_count + r.i AS shardid, r.groupid
    FROM demo_distributed d CROSS JOIN demo_ranges r
    UNION ALL
    SELECT 102008 + 3 * :shard_count, g FROM generate_series(0, 2) AS g
) AS p;

ANALYZE accounts, orders, events, plans;
