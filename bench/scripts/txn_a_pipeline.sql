-- The tenant transaction, the tenant set in the BEGIN's round trip
-- (-M extended/prepared).
\set aid random(1, 100000 * :scale)
\startpipeline
BEGIN;
SELECT set_config('app.current_tenant_id', 't1', true);
\endpipeline
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
