-- An emulation of the Citus extension's catalog and of the functions the example's
-- migrations and setup call, for plain PostgreSQL (Citus is not packaged by Debian).
--
-- Run once per database as a superuser (the test and load/run.sh run it in template1, so
-- Django's test database gets it too). It creates, in schema public:
--   - the catalog tables pgtenant reads, with the names and columns of Citus 13's
--     (pg_dist_partition, pg_dist_shard, pg_dist_placement, pg_dist_node,
--     pg_dist_colocation; the same as tests/support/citus.rs CATALOG_DDL) and
--     column_to_column_name(regclass, text); partkey is a serialized Var, as Citus has it;
--   - citus_set_coordinator_host(host, port) and citus_add_node(host, port): group 0 is
--     the coordinator, each added node a new group (1, 2, …);
--   - create_distributed_table(table, column[, type, colocate_with, shard_count]):
--     hash ranges exactly as Citus makes them (2^32 / shard_count wide from INT32_MIN,
--     the last one ending at INT32_MAX), shard i placed on the i-th worker group round
--     robin (groups in order), shard ids from 102008; a table whose column type (and
--     collation) and shard count match an existing colocation group joins it and gets
--     that group's ranges and placements (Citus' default colocation);
--   - create_reference_table(table): one shard, a placement on every group;
--   - undistribute_table(table): drops the table's catalog rows.
-- No data moves: the emulation is meant for ONE server that plays every node (it listens
-- on 127.0.0.1, 127.0.0.2, 127.0.0.3, … and citus_add_node names those addresses), so
-- every node sees the same rows and a statement's answer does not depend on where it ran;
-- where pgtenant sent it shows in its SHOW ROUTES / SHOW SERVERS and in the server's
-- inet_server_addr(). On real Citus none of this is run: the migrations call the real
-- functions.

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
CREATE SEQUENCE pg_dist_shardid_seq START 102008;
CREATE SEQUENCE pg_dist_placement_placementid_seq;
CREATE SEQUENCE pg_dist_colocationid_seq;
GRANT SELECT ON pg_dist_partition, pg_dist_shard, pg_dist_placement, pg_dist_node,
    pg_dist_colocation TO PUBLIC;

-- partkey is a serialized Var node; its varattno names the column.
CREATE FUNCTION column_to_column_name(table_name regclass, column_var_text text)
RETURNS text LANGUAGE sql STABLE STRICT AS $$
    SELECT a.attname::text FROM pg_attribute a
    WHERE a.attrelid = table_name
      AND a.attnum = substring(column_var_text FROM ':varattno (-?[0-9]+)')::int2
      AND NOT a.attisdropped
$$;

CREATE FUNCTION citus_set_coordinator_host(host text, port integer DEFAULT 5432)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    DELETE FROM pg_dist_node WHERE groupid = 0;
    INSERT INTO pg_dist_node (nodeid, groupid, nodename, nodeport, hasmetadata,
                              metadatasynced, shouldhaveshards)
    VALUES ((SELECT coalesce(max(nodeid), 0) + 1 FROM pg_dist_node), 0, host, port,
            true, true, false);
END
$$;

CREATE FUNCTION citus_add_node(nodename text, nodeport integer DEFAULT 5432)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    id integer;
BEGIN
    SELECT n.nodeid INTO id FROM pg_dist_node n
    WHERE n.nodename = citus_add_node.nodename AND n.nodeport = citus_add_node.nodeport;
    IF id IS NOT NULL THEN
        RETURN id;
    END IF;
    id := (SELECT coalesce(max(n.nodeid), 0) + 1 FROM pg_dist_node n);
    INSERT INTO pg_dist_node (nodeid, groupid, nodename, nodeport, hasmetadata,
                              metadatasynced, shouldhaveshards)
    VALUES (id, (SELECT greatest(coalesce(max(n.groupid), 0), 0) + 1 FROM pg_dist_node n),
            citus_add_node.nodename, citus_add_node.nodeport, true, true, true);
    RETURN id;
END
$$;

CREATE FUNCTION create_distributed_table(table_name regclass, distribution_column text,
                                         distribution_type text DEFAULT 'hash',
                                         colocate_with text DEFAULT 'default',
                                         shard_count integer DEFAULT 32)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    att record;
    coloc integer;
    model regclass;
    groups integer[];
    step bigint;
    lo bigint;
    hi bigint;
    sid bigint;
    s record;
BEGIN
    IF distribution_type <> 'hash' THEN
        RAISE EXCEPTION 'the emulation only has hash distribution, not %', distribution_type;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = table_name) THEN
        RAISE EXCEPTION 'table "%" is already distributed', table_name;
    END IF;
    SELECT a.attnum, a.atttypid, a.atttypmod, a.attcollation INTO att
    FROM pg_attribute a
    WHERE a.attrelid = table_name AND a.attname = distribution_column AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', distribution_column, table_name;
    END IF;
    SELECT array_agg(n.groupid ORDER BY n.groupid) INTO groups
    FROM pg_dist_node n WHERE n.groupid > 0 AND n.noderole = 'primary' AND n.shouldhaveshards;
    IF groups IS NULL THEN
        RAISE EXCEPTION 'no worker nodes (citus_add_node first)';
    END IF;

    -- The colocation group, and a table already in it (its shards are the model).
    IF colocate_with = 'none' THEN
        coloc := NULL;
    ELSIF colocate_with = 'default' THEN
        SELECT c.colocationid INTO coloc FROM pg_dist_colocation c
        WHERE c.shardcount = shard_count AND c.distributioncolumntype = att.atttypid
          AND c.distributioncolumncollation = att.attcollation
        ORDER BY c.colocationid LIMIT 1;
    ELSE
        SELECT p.colocationid INTO coloc FROM pg_dist_partition p
        WHERE p.logicalrelid = colocate_with::regclass AND p.partmethod = 'h';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'cannot colocate with "%": not a distributed table', colocate_with;
        END IF;
    END IF;
    IF coloc IS NULL THEN
        coloc := nextval('pg_dist_colocationid_seq');
        INSERT INTO pg_dist_colocation VALUES (coloc, shard_count, 1, att.atttypid, att.attcollation);
    END IF;
    SELECT p.logicalrelid INTO model FROM pg_dist_partition p
    WHERE p.colocationid = coloc ORDER BY p.logicalrelid::oid LIMIT 1;

    INSERT INTO pg_dist_partition VALUES (
        table_name, 'h',
        format('{VAR :varno 1 :varattno %s :vartype %s :vartypmod %s :varcollid %s '
               ':varlevelsup 0 :varnosyn 1 :varattnosyn %s :location -1}',
               att.attnum, att.atttypid, att.atttypmod, att.attcollation, att.attnum),
        coloc, 's');

    IF model IS NOT NULL THEN
        -- Colocated: the same ranges on the same groups.
        FOR s IN
            SELECT sh.shardminvalue, sh.shardmaxvalue, pl.groupid
            FROM pg_dist_shard sh JOIN pg_dist_placement pl ON pl.shardid = sh.shardid
            WHERE sh.logicalrelid = model ORDER BY sh.shardminvalue::int
        LOOP
            sid := nextval('pg_dist_shardid_seq');
            INSERT INTO pg_dist_shard VALUES (table_name, sid, 't', s.shardminvalue, s.shardmaxvalue);
            INSERT INTO pg_dist_placement VALUES
                (nextval('pg_dist_placement_placementid_seq'), sid, 1, 0, s.groupid);
        END LOOP;
        RETURN;
    END IF;
    step := (1::bigint << 32) / shard_count;
    FOR i IN 0 .. shard_count - 1 LOOP
        lo := -2147483648 + i * step;
        hi := CASE WHEN i = shard_count - 1 THEN 2147483647 ELSE lo + step - 1 END;
        sid := nextval('pg_dist_shardid_seq');
        INSERT INTO pg_dist_shard VALUES (table_name, sid, 't', lo::text, hi::text);
        INSERT INTO pg_dist_placement VALUES (nextval('pg_dist_placement_placementid_seq'),
            sid, 1, 0, groups[1 + i % array_length(groups, 1)]);
    END LOOP;
END
$$;

CREATE FUNCTION create_reference_table(table_name regclass)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    coloc integer;
    sid bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = table_name) THEN
        RAISE EXCEPTION 'table "%" is already distributed', table_name;
    END IF;
    SELECT c.colocationid INTO coloc FROM pg_dist_colocation c
    WHERE c.shardcount = 1 AND c.distributioncolumntype = 0 LIMIT 1;
    IF coloc IS NULL THEN
        coloc := nextval('pg_dist_colocationid_seq');
        INSERT INTO pg_dist_colocation VALUES (coloc, 1, -1, 0, 0);
    END IF;
    INSERT INTO pg_dist_partition VALUES (table_name, 'n', NULL, coloc, 't');
    sid := nextval('pg_dist_shardid_seq');
    INSERT INTO pg_dist_shard VALUES (table_name, sid, 't', NULL, NULL);
    INSERT INTO pg_dist_placement
    SELECT nextval('pg_dist_placement_placementid_seq'), sid, 1, 0, n.groupid
    FROM pg_dist_node n WHERE n.noderole = 'primary' ORDER BY n.groupid;
END
$$;

CREATE FUNCTION undistribute_table(table_name regclass)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    DELETE FROM pg_dist_placement
    WHERE shardid IN (SELECT shardid FROM pg_dist_shard WHERE logicalrelid = table_name);
    DELETE FROM pg_dist_shard WHERE logicalrelid = table_name;
    DELETE FROM pg_dist_partition WHERE logicalrelid = table_name;
END
$$;
