-- Select-only point lookup, the client setting the tenant in the same round
-- trip (-M simple: one multi-statement Query, an implicit transaction).
\set aid random(1, 100000 * :scale)
SET LOCAL app.current_tenant_id = 't1' \; SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
