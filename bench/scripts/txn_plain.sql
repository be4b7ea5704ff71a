-- The tenant transaction (single-client latency), the client sending only
-- its own statements: BEGIN, a point SELECT, COMMIT.
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
