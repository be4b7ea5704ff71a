-- Select-only point lookup, the client setting the tenant in the same round
-- trip (-M extended/prepared: one pipeline, one Sync, an implicit
-- transaction, set_config because SET LOCAL outside a transaction block
-- warns in the extended protocol).
\set aid random(1, 100000 * :scale)
\startpipeline
SELECT set_config('app.current_tenant_id', 't1', true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
\endpipeline
