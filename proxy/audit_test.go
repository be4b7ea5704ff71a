package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/internal/pgtest"
	"github.com/pgmoat/pgmoat/policy"
)

// auditSchema builds, as the superuser, a database with one example of each
// thing the audit reports, next to correctly protected tables. It relies on
// the roles app_owner and pgmoat that the shared cluster's demo schema
// created.
const auditSchema = `
GRANT USAGE, CREATE ON SCHEMA public TO app_owner;
CREATE SCHEMA billing AUTHORIZATION app_owner;
GRANT USAGE ON SCHEMA billing TO pgmoat;
SET ROLE app_owner;

-- Protected as DESIGN.md recommends: no findings.
CREATE TABLE public.orders (id bigserial PRIMARY KEY, tenant_id text NOT NULL CHECK (tenant_id <> ''), amount numeric);
CREATE INDEX ON public.orders (tenant_id, id);
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.orders
  USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
  WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));

-- A uuid tenant column, protected: no findings.
CREATE TABLE public.docs (tenant_id uuid NOT NULL, body text);
CREATE INDEX ON public.docs (tenant_id);
ALTER TABLE public.docs ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.docs
  USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid);

-- Everything missing: nullable, no CHECK, no index, no RLS, no policy.
CREATE TABLE public.events (id bigserial, tenant_id varchar(64), payload text);

-- RLS not forced; a policy without NULLIF or WITH CHECK; an unkeyed policy
-- for pgmoat; a policy for another role (not reported).
CREATE TABLE billing.invoices (id int, tenant_id text NOT NULL CHECK (tenant_id <> ''));
CREATE INDEX ON billing.invoices (tenant_id);
ALTER TABLE billing.invoices ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON billing.invoices USING (tenant_id = current_setting('app.current_tenant_id'));
CREATE POLICY read_all ON billing.invoices FOR SELECT TO pgmoat USING (true);
CREATE POLICY admins ON billing.invoices TO app_owner USING (true);

CREATE TABLE public.plans (id int PRIMARY KEY, name text);

CREATE VIEW public.all_orders AS SELECT * FROM public.orders;
CREATE VIEW public.order_ids WITH (security_invoker = true) AS SELECT id FROM public.orders;
CREATE VIEW public.plan_names AS SELECT name FROM public.plans;

CREATE FUNCTION public.refund(bigint, numeric) RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
CREATE FUNCTION public.total() RETURNS int LANGUAGE sql AS 'SELECT 1';
RESET ROLE;

-- A protected tenant table that pgmoat's role owns.
CREATE TABLE public.notes (tenant_id text NOT NULL CHECK (tenant_id <> ''));
CREATE INDEX ON public.notes (tenant_id);
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.notes
  USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
  WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
ALTER TABLE public.notes OWNER TO pgmoat;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, billing TO pgmoat;
`

// createAuditDB creates database name on the shared cluster, loads sql into
// it as the superuser, and drops it when the test ends.
func createAuditDB(t *testing.T, c *pgtest.Cluster, name, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Exec(ctx, "postgres", "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	if err := c.Exec(ctx, name, sql); err != nil {
		t.Fatal(err)
	}
}

func briefFindings(fs []policy.Finding) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = fmt.Sprintf("%s %s %s", f.Severity, f.Code, f.Object)
	}
	return out
}

func TestAuditDatabase(t *testing.T) {
	c := pgtest.Shared(t)
	createAuditDB(t, c, "audit_loader", auditSchema)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connect := func(t *testing.T, user, password string) *pgconn.PgConn {
		t.Helper()
		conn, err := pgconn.Connect(ctx, c.DSN(user, password, "audit_loader"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	opts := policy.AuditOptions{
		TenantSetting: "app.current_tenant_id",
		Protected:     []string{"billing.invoices", "public.gone"},
		Shared:        []string{"plans"},
	}

	t.Run("snapshot", func(t *testing.T) {
		snap, err := LoadAuditSnapshot(ctx, connect(t, "pgmoat", "pgmoat_secret"), "")
		if err != nil {
			t.Fatal(err)
		}
		if snap.Database != "audit_loader" || snap.Role != (policy.AuditRole{Name: "pgmoat"}) {
			t.Errorf("database %q, role %+v", snap.Database, snap.Role)
		}
		tables := map[string]policy.AuditTable{}
		for _, tb := range snap.Tables {
			tables[tb.Key()] = tb
		}
		ev := tables["public.events"]
		if ev.Tenant == nil || ev.Tenant.Type != "character varying(64)" || !ev.Tenant.Textual || ev.Tenant.NotNull || ev.Tenant.Indexed {
			t.Errorf("public.events tenant column = %+v", ev.Tenant)
		}
		if d := tables["public.docs"].Tenant; d == nil || d.Type != "uuid" || d.Textual || !d.NotNull || !d.Indexed {
			t.Errorf("public.docs tenant column = %+v", d)
		}
		if o := tables["public.orders"]; o.Tenant == nil || !slices.Equal(o.Tenant.Checks, []string{"CHECK ((tenant_id <> ''::text))"}) {
			t.Errorf("public.orders tenant column = %+v", o.Tenant)
		}
		if n := tables["public.notes"]; !n.OwnedByRole || n.Owner != "pgmoat" {
			t.Errorf("public.notes owner %q, owned by role %v", n.Owner, n.OwnedByRole)
		}
		if p := tables["public.plans"]; p.Tenant != nil || p.Kind != 'r' {
			t.Errorf("public.plans = %+v", p)
		}
		inv := tables["billing.invoices"]
		var pols []string
		for _, p := range inv.Policies {
			pols = append(pols, fmt.Sprintf("%s %c applies=%v using=%s check=%s", p.Name, p.Command, p.AppliesToRole, p.Using, p.WithCheck))
		}
		want := []string{
			"admins * applies=false using=true check=",
			"by_tenant * applies=true using=(tenant_id = current_setting('app.current_tenant_id'::text)) check=",
			"read_all r applies=true using=true check=",
		}
		if !slices.Equal(pols, want) {
			t.Errorf("billing.invoices policies:\n  %s\nwant:\n  %s", strings.Join(pols, "\n  "), strings.Join(want, "\n  "))
		}
		if !inv.RowSecurity || inv.ForceRowSecurity {
			t.Errorf("billing.invoices rls %v force %v", inv.RowSecurity, inv.ForceRowSecurity)
		}
	})

	t.Run("findings, fix, findings", func(t *testing.T) {
		app := connect(t, "pgmoat", "pgmoat_secret")
		got, err := AuditDatabase(ctx, app, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			"error declared_table_missing public.gone",
			"error rls_not_forced billing.invoices",
			"warning policy_without_with_check billing.invoices",
			"warning policy_without_nullif billing.invoices",
			"error policy_not_keyed billing.invoices",
			"warning tenant_column_nullable public.events",
			"warning tenant_column_no_check public.events",
			"warning no_tenant_index public.events",
			"error rls_disabled public.events",
			"error no_tenant_policy public.events",
			"error role_owns_table public.notes",
			"error view_not_security_invoker public.all_orders",
			"warning view_not_security_invoker public.plan_names",
			"warning security_definer_function public.refund(bigint, numeric)",
		}
		if b := briefFindings(got); !slices.Equal(b, want) {
			t.Fatalf("findings:\n  %s\nwant:\n  %s", strings.Join(b, "\n  "), strings.Join(want, "\n  "))
		}

		// The migration runs, and leaves only what needs a human.
		fix := policy.FixSQL(got)
		if err := c.Exec(ctx, "audit_loader", fix); err != nil {
			t.Fatalf("%v\n%s", err, fix)
		}
		got, err = AuditDatabase(ctx, app, opts)
		if err != nil {
			t.Fatal(err)
		}
		want = []string{
			"error declared_table_missing public.gone",
			"error policy_not_keyed billing.invoices",
			"warning tenant_column_nullable public.events", // the fix only suggests SET NOT NULL
			"error role_owns_table public.notes",
			"warning security_definer_function public.refund(bigint, numeric)",
		}
		if b := briefFindings(got); !slices.Equal(b, want) {
			t.Fatalf("after the fix, findings:\n  %s\nwant:\n  %s\nfix:\n%s", strings.Join(b, "\n  "), strings.Join(want, "\n  "), fix)
		}
	})

	t.Run("superuser", func(t *testing.T) {
		got, err := AuditDatabase(ctx, connect(t, "postgres", ""), opts)
		if err != nil {
			t.Fatal(err)
		}
		b := briefFindings(got)
		for _, w := range []string{"error role_superuser postgres", "error role_bypassrls postgres", "error role_owns_table public.orders"} {
			if !slices.Contains(b, w) {
				t.Errorf("findings lack %q:\n  %s", w, strings.Join(b, "\n  "))
			}
		}
	})
}

// TestAuditDottedNames: a."b.c" and "a.b".c are two tables to the audit,
// though "schema.name" would name both a.b.c.
func TestAuditDottedNames(t *testing.T) {
	c := pgtest.Shared(t)
	createAuditDB(t, c, "audit_dots", `
CREATE SCHEMA a;
CREATE SCHEMA "a.b";
CREATE TABLE a."b.c" (tenant_id text NOT NULL);
ALTER TABLE a."b.c" ENABLE ROW LEVEL SECURITY;
CREATE TABLE "a.b".c (tenant_id text);
GRANT USAGE ON SCHEMA a, "a.b" TO pgmoat;
`)
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, c.DSN("pgmoat", "pgmoat_secret", "audit_dots"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	snap, err := LoadAuditSnapshot(ctx, conn, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tb := range snap.Tables {
		if tb.Schema == "a" || tb.Schema == "a.b" {
			got = append(got, fmt.Sprintf("%s|%s rls=%v notnull=%v", tb.Schema, tb.Name, tb.RowSecurity, tb.Tenant != nil && tb.Tenant.NotNull))
		}
	}
	slices.Sort(got)
	if want := []string{"a.b|c rls=false notnull=false", "a|b.c rls=true notnull=true"}; !slices.Equal(got, want) {
		t.Errorf("tables %q, want %q", got, want)
	}
}
