-- The tenant transaction, the tenant set in the BEGIN's round trip (-M simple).
\set aid random(1, 100000 * :scale)
BEGIN \; SET LOCAL app.current_tenant_id = 't1';
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
