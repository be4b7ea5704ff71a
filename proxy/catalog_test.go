package proxy

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/internal/pgtest"
	"github.com/pgmoat/pgmoat/policy"
)

// policiesSchema: tables whose row-level security looks keyed on the tenant
// setting in some expression but not in every one PostgreSQL applies.
const policiesSchema = `
CREATE SCHEMA pol;
GRANT USAGE ON SCHEMA pol TO pgmoat;
CREATE FUNCTION pol.tenant_table(name text, using_expr text, check_expr text, cmd text DEFAULT 'ALL') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('CREATE TABLE pol.%I (tenant_id text NOT NULL)', name);
  EXECUTE format('ALTER TABLE pol.%I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', name);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pol.%I TO pgmoat', name);
  EXECUTE format('CREATE POLICY p ON pol.%I FOR %s %s %s', name, cmd,
    CASE WHEN using_expr IS NULL THEN '' ELSE 'USING (' || using_expr || ')' END,
    CASE WHEN check_expr IS NULL THEN '' ELSE 'WITH CHECK (' || check_expr || ')' END);
END $$;
SELECT pol.tenant_table('good', 'tenant_id = current_setting(''app.current_tenant_id'', true)', NULL);
SELECT pol.tenant_table('read_all', 'true', 'tenant_id = current_setting(''app.current_tenant_id'', true)');
SELECT pol.tenant_table('write_all', 'tenant_id = current_setting(''app.current_tenant_id'', true)', 'true');
SELECT pol.tenant_table('prefix', 'tenant_id = current_setting(''app.current_tenant_id_admin'', true)', NULL);
SELECT pol.tenant_table('insert_only', NULL, 'tenant_id = current_setting(''app.current_tenant_id'', true)', 'INSERT');
SELECT pol.tenant_table('or_true', 'tenant_id = current_setting(''app.current_tenant_id'', true) OR true', NULL);
SELECT pol.tenant_table('not_equal', 'tenant_id <> current_setting(''app.current_tenant_id'', true)', NULL);
SELECT pol.tenant_table('coalesce', 'tenant_id = coalesce(current_setting(''app.current_tenant_id'', true), tenant_id)', NULL);
SELECT pol.tenant_table('nullif', 'tenant_id = NULLIF(current_setting(''app.current_tenant_id'', true), '''')', NULL);
SELECT pol.tenant_table('subquery', 'tenant_id = (SELECT current_setting(''app.current_tenant_id'', true))', NULL);
SELECT pol.tenant_table('and_more', 'tenant_id = current_setting(''app.current_tenant_id'', true) AND tenant_id <> ''''', NULL);
SELECT pol.tenant_table('two_policies', 'tenant_id = current_setting(''app.current_tenant_id'', true)', NULL);
CREATE POLICY q ON pol.two_policies FOR SELECT USING (tenant_id = current_setting('app.current_tenant_id', true) OR tenant_id = 'public');
SELECT pol.tenant_table('two_columns', 'tenant_id = current_setting(''app.current_tenant_id'', true)', NULL);
ALTER TABLE pol.two_columns ADD COLUMN owner text;
CREATE POLICY q ON pol.two_columns FOR SELECT USING (owner = current_setting('app.current_tenant_id', true));
-- "=" and current_setting that are not PostgreSQL's, though the text reads the same.
CREATE FUNCTION pol.always(text, varchar) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = varchar, FUNCTION = pol.always);
SELECT pol.tenant_table('user_operator', 'tenant_id = current_setting(''app.current_tenant_id'')::varchar', NULL);
CREATE FUNCTION public.current_setting(varchar) RETURNS text LANGUAGE sql STABLE AS $f$SELECT 'acme'::text$f$;
SELECT pol.tenant_table('user_function', 'tenant_id = current_setting(''app.current_tenant_id''::varchar)', NULL);
-- A case-insensitive column: tenant acme would see ACME's rows.
CREATE COLLATION pol.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE pol.ci_column (tenant_id text COLLATE pol.ci NOT NULL);
ALTER TABLE pol.ci_column ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON pol.ci_column USING (tenant_id = current_setting('app.current_tenant_id', true));
CREATE DOMAIN pol.ci_tenant AS text COLLATE pol.ci;
CREATE TABLE pol.ci_domain (tenant_id pol.ci_tenant NOT NULL);
ALTER TABLE pol.ci_domain ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON pol.ci_domain USING (tenant_id = current_setting('app.current_tenant_id', true));
-- pol."x.y" and "pol.x".y are both "pol.x.y" to the policy.
SELECT pol.tenant_table('x.y', 'tenant_id = current_setting(''app.current_tenant_id'', true)', NULL);
CREATE SCHEMA "pol.x";
GRANT USAGE ON SCHEMA "pol.x" TO pgmoat;
CREATE TABLE "pol.x".y (tenant_id text);
GRANT SELECT ON "pol.x".y TO pgmoat;
`

// catalogOf creates database db on the shared cluster (dropped after the
// test), loads schema into it as the superuser, and returns the catalog
// pgmoat's role sees there.
func catalogOf(t *testing.T, db, schema string) *policy.Catalog {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Exec(context.Background(), "postgres", "DROP DATABASE "+db+" WITH (FORCE)") })
	if err := c.Exec(ctx, db, schema); err != nil {
		t.Fatal(err)
	}
	conn, err := pgconn.Connect(ctx, c.DSN("pgmoat", "pgmoat_secret", db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	cat, err := LoadCatalog(ctx, conn, "app.current_tenant_id")
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

func TestCatalogTenantPolicy(t *testing.T) {
	cat := catalogOf(t, "pols", policiesSchema)
	for name, want := range map[string]bool{
		"good": true, "read_all": false, "write_all": false, "prefix": false,
		// Reads have no permissive policy, so they see nothing: safe.
		"insert_only": true,
		// Naming the setting is not enough.
		"or_true": false, "not_equal": false, "coalesce": false, "two_policies": false,
		"two_columns": false, "user_operator": false, "user_function": false,
		"ci_column": false, "ci_domain": false,
		"x.y":    false, // ambiguous
		"nullif": true, "subquery": true, "and_more": true,
	} {
		rel := cat.Relations["pol."+name]
		if rel == nil {
			t.Fatalf("pol.%s not in the catalog", name)
		}
		if rel.TenantPolicy != want {
			t.Errorf("pol.%s: TenantPolicy = %v, want %v", name, rel.TenantPolicy, want)
		}
	}
}

func TestCatalogRefusesBypassingRole(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, c.DSN("postgres", "", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = LoadCatalog(ctx, conn, "app.current_tenant_id")
	if err == nil || !strings.Contains(err.Error(), "BYPASSRLS") {
		t.Fatalf("LoadCatalog as superuser: %v, want a refusal", err)
	}
}

// operatorsSchema defines operators outside pg_catalog: one calling a
// SECURITY DEFINER function, one a plain function, and citext's (an
// extension's, left out of the catalog: its functions are not SECURITY
// DEFINER).
const operatorsSchema = `
CREATE EXTENSION citext;
CREATE FUNCTION public.peek(int, int) RETURNS boolean LANGUAGE sql SECURITY DEFINER AS 'SELECT $1 = $2';
CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = public.peek);
CREATE FUNCTION public.near(int, int) RETURNS boolean LANGUAGE sql AS 'SELECT abs($1 - $2) < 2';
CREATE OPERATOR public.<~> (LEFTARG = int, RIGHTARG = int, FUNCTION = public.near);
`

// User operators hide function calls: the catalog lists them, and the
// policy refuses an operator whose function tenants may not call.
func TestCatalogOperators(t *testing.T) {
	cat := catalogOf(t, "ops", operatorsSchema)
	want := map[string][]string{"public.===": {"public.peek"}, "public.<~>": {"public.near"}}
	if !reflect.DeepEqual(cat.Operators, want) {
		t.Fatalf("Operators = %v, want %v", cat.Operators, want)
	}
	for key, want := range map[string]bool{"public.citext_eq": true, "pg_catalog.lower": false, "public.peek": false} {
		if fn := cat.Functions[key]; fn == nil || fn.Extension != want {
			t.Errorf("%s: %+v, want Extension %v", key, fn, want)
		}
	}

	rules := policy.Rules{TenantSetting: "app.current_tenant_id", AllowFunctions: map[string]bool{"public.near": false}}
	e := policy.NewEngine(rules, cat, 0)
	for _, tc := range []struct {
		sql    string
		reason policy.Reason // "" if allowed
	}{
		{"SELECT 1 === 2", policy.ReasonFunction},
		{"SELECT 1 WHERE 1 === ANY (ARRAY[1, 2])", policy.ReasonFunction},
		{"SELECT x FROM generate_series(1, 3) x ORDER BY x USING ===", policy.ReasonFunction},
		{"SELECT 1 <~> 2", ""},                    // public.near is allowed
		{"SELECT 1 OPERATOR(pg_catalog.=) 2", ""}, // pg_catalog only
		{"SELECT 'a'::citext = 'A', 1 = 1", ""},   // citext's "=" is an extension's
		{"SELECT 1 OPERATOR(public.===) 2", policy.ReasonFunction},
	} {
		_, v := e.Check(tc.sql, nil)
		var got policy.Reason
		if v != nil {
			got = v.Reason
		}
		if got != tc.reason {
			t.Errorf("%s: reason %q (%v), want %q", tc.sql, got, v, tc.reason)
		}
	}
}
