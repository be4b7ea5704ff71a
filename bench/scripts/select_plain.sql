-- Select-only point lookup, the client sending only its own statement
-- (R: the role's default setting is the tenant, C: pgmoat injects it).
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
