-- The multi-tenant pgbench schema of `make bench` (bench/runner loads it as
-- the superuser into a throwaway database). Every pgbench table carries a
-- tenant_id column that leads its primary key; row-level security is
-- enabled and forced with the NULLIF policy form (DESIGN.md section 10), so a
-- session that has not set app.current_tenant_id sees nothing. Several
-- tenants have the same data; the benchmark runs as tenant t1.
--
-- psql variables: tenants (number of tenants t1..tN), scale (pgbench scale
-- factor per tenant: 1 branch, 10 tellers and 100000 accounts per unit).
--
-- Roles (none owns a table; the superuser does):
--   bench_app     the application role used directly (A) and through
--                 PgBouncer (B, B'); sets the tenant itself;
--   bench_app_t1  the same rights with the tenant as its default setting,
--                 for the bare relay (R), whose clients cannot set it;
--   bench_pgmoat  pgmoat's upstream role (C).
\set ON_ERROR_STOP on

CREATE TABLE pgbench_branches (
  tenant_id text NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '') CHECK (tenant_id <> ''),
  bid int NOT NULL,
  bbalance int NOT NULL,
  filler char(88),
  PRIMARY KEY (tenant_id, bid)
) WITH (fillfactor = 100);

CREATE TABLE pgbench_tellers (
  tenant_id text NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '') CHECK (tenant_id <> ''),
  tid int NOT NULL,
  bid int NOT NULL,
  tbalance int NOT NULL,
  filler char(84),
  PRIMARY KEY (tenant_id, tid)
) WITH (fillfactor = 100);

CREATE TABLE pgbench_accounts (
  tenant_id text NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '') CHECK (tenant_id <> ''),
  aid int NOT NULL,
  bid int NOT NULL,
  abalance int NOT NULL,
  filler char(84),
  PRIMARY KEY (tenant_id, aid)
) WITH (fillfactor = 100);

CREATE TABLE pgbench_history (
  tenant_id text NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '') CHECK (tenant_id <> ''),
  tid int,
  bid int,
  aid int,
  delta int,
  mtime timestamp,
  filler char(22)
);

INSERT INTO pgbench_branches (tenant_id, bid, bbalance)
SELECT 't' || t, b, 0
FROM generate_series(1, :tenants) t, generate_series(1, :scale) b;

INSERT INTO pgbench_tellers (tenant_id, tid, bid, tbalance)
SELECT 't' || t, i, (i - 1) / 10 + 1, 0
FROM generate_series(1, :tenants) t, generate_series(1, 10 * :scale) i;

INSERT INTO pgbench_accounts (tenant_id, aid, bid, abalance, filler)
SELECT 't' || t, i, (i - 1) / 100000 + 1, 0, ''
FROM generate_series(1, :tenants) t, generate_series(1, 100000 * :scale) i;

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['pgbench_branches', 'pgbench_tellers', 'pgbench_accounts', 'pgbench_history'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
      USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
      WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))$p$, t);
  END LOOP;
END
$$;

CREATE ROLE bench_app LOGIN PASSWORD 'bench_app_secret' NOSUPERUSER NOBYPASSRLS;
CREATE ROLE bench_app_t1 LOGIN PASSWORD 'bench_app_t1_secret' NOSUPERUSER NOBYPASSRLS;
ALTER ROLE bench_app_t1 SET app.current_tenant_id = 't1';
CREATE ROLE bench_pgmoat LOGIN PASSWORD 'bench_pgmoat_secret' NOSUPERUSER NOBYPASSRLS;
GRANT SELECT, INSERT, UPDATE ON pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history
  TO bench_app, bench_app_t1, bench_pgmoat;

VACUUM ANALYZE;
