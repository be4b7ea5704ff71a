-- Select-only point lookup in a tenant transaction written the usual way:
-- one statement per round trip.
\set aid random(1, 100000 * :scale)
BEGIN;
SET LOCAL app.current_tenant_id = 't1';
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
