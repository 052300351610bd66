-- pgtenant demo, real Citus (UNTESTED: used only when the Citus extension is installed,
-- which Debian does not package). Run on the coordinator as role app after schema.sql and
-- before data.sql, once the workers are registered. psql variable: shard_count.
-- Citus places the shards of each table round robin on the two workers.
SELECT create_distributed_table('accounts', 'id', shard_count => :shard_count);
SELECT create_distributed_table('orders', 'account_id', colocate_with => 'accounts');
SELECT create_distributed_table('events', 'tenant', shard_count => :shard_count);
SELECT create_reference_table('plans');
