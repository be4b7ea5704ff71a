package policy

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// testSetting is the tenant setting of the test rules.
const testSetting = "app.current_tenant_id"

// demoCatalog mirrors deploy/demo/schema.sql plus a few objects for the
// rules the demo does not exercise, on top of the real PostgreSQL 15
// pg_catalog and information_schema (testdata/pg15_*.txt).
func demoCatalog(t testing.TB) *Catalog {
	t.Helper()
	cat := &Catalog{
		SearchPath: []string{"pg_catalog", "public"},
		Relations:  map[string]*Relation{},
		Functions:  map[string]*Function{},
	}
	addRel := func(r *Relation) { cat.Relations[r.Key()] = r }
	addFn := func(f *Function) { cat.Functions[f.Key()] = f }

	readFields(t, "testdata/pg15_relations.txt", func(f []string) {
		addRel(&Relation{Schema: f[0], Name: f[1], Kind: f[2][0]})
	})
	readFields(t, "testdata/pg15_functions.txt", func(f []string) {
		addFn(&Function{Schema: f[0], Name: f[1], Kind: f[2][0], SecurityDefiner: f[3] == "t"})
	})

	protected := func(name string) *Relation {
		return &Relation{Schema: "public", Name: name, Kind: 'r', RowSecurity: true,
			ForceRowSecurity: true, TenantPolicy: true, TenantColumn: true}
	}
	addRel(protected("customers"))
	addRel(protected("orders"))
	// Protected, but declared internal in the rules.
	addRel(protected("tenant_audit"))
	addRel(&Relation{Schema: "public", Name: "tenant_audit_view", Kind: 'v', SecurityInvoker: true, DependsOn: []string{"public.tenant_audit"}})
	addRel(&Relation{Schema: "public", Name: "tenant_audit_2024", Kind: 'r', RowSecurity: true, ForceRowSecurity: true,
		TenantPolicy: true, TenantColumn: true, IsPartition: true, Parents: []string{"public.tenant_audit"}})
	// A security_invoker view over a protected table, itself declared internal.
	addRel(&Relation{Schema: "public", Name: "internal_view", Kind: 'v', SecurityInvoker: true, DependsOn: []string{"public.orders"}})
	addRel(&Relation{Schema: "public", Name: "plans", Kind: 'r'})
	addRel(&Relation{Schema: "public", Name: "feature_flags", Kind: 'r'})
	addRel(&Relation{Schema: "public", Name: "audit_raw", Kind: 'r', TenantColumn: true})
	// RLS enabled but not forced: pgmoat's role could own it.
	addRel(&Relation{Schema: "public", Name: "notes", Kind: 'r', RowSecurity: true, TenantPolicy: true, TenantColumn: true})
	// Declared protected in the rules, RLS without a tenant policy.
	addRel(&Relation{Schema: "public", Name: "legacy", Kind: 'r', RowSecurity: true, ForceRowSecurity: true})
	addRel(&Relation{Schema: "public", Name: "events", Kind: 'p', RowSecurity: true, ForceRowSecurity: true, TenantPolicy: true, TenantColumn: true})
	addRel(&Relation{Schema: "billing", Name: "invoices", Kind: 'r', RowSecurity: true, ForceRowSecurity: true, TenantPolicy: true, TenantColumn: true})
	addRel(&Relation{Schema: "billing", Name: "ledger", Kind: 'r'})
	for _, s := range []struct{ seq, owner string }{
		{"customers_id_seq", "public.customers"},
		{"orders_id_seq", "public.orders"},
		{"audit_raw_id_seq", "public.audit_raw"},
		{"tenant_audit_id_seq", "public.tenant_audit"},
		{"global_seq", ""},
	} {
		addRel(&Relation{Schema: "public", Name: s.seq, Kind: 'S', OwnedBy: s.owner})
	}
	addRel(&Relation{Schema: "public", Name: "audit_view", Kind: 'v', DependsOn: []string{"public.audit_raw"}})
	addRel(&Relation{Schema: "public", Name: "orders_definer_view", Kind: 'v', DependsOn: []string{"public.orders"}})
	addRel(&Relation{Schema: "public", Name: "orders_view", Kind: 'v', SecurityInvoker: true, DependsOn: []string{"public.orders"}})
	addRel(&Relation{Schema: "public", Name: "order_plans", Kind: 'v', SecurityInvoker: true,
		DependsOn: []string{"public.orders", "public.plans", "pg_catalog.pg_class"}})
	addRel(&Relation{Schema: "public", Name: "big_orders", Kind: 'v', SecurityInvoker: true, DependsOn: []string{"public.orders_view"}})
	addRel(&Relation{Schema: "public", Name: "invoker_audit", Kind: 'v', SecurityInvoker: true, DependsOn: []string{"public.audit_raw"}})
	addRel(&Relation{Schema: "public", Name: "invoker_fn_view", Kind: 'v', SecurityInvoker: true,
		DependsOn: []string{"public.orders"}, Functions: []string{"public.do_thing"}})
	addRel(&Relation{Schema: "public", Name: "order_totals", Kind: 'm', DependsOn: []string{"public.orders"}})
	addRel(&Relation{Schema: "public", Name: "remote_orders", Kind: 'f'})
	addRel(&Relation{Schema: "public", Name: "pg_stat_statements", Kind: 'v'})
	// A view declared shared in the rules, and views over what tenants may
	// not read.
	addRel(&Relation{Schema: "public", Name: "shared_view", Kind: 'v', DependsOn: []string{"public.plans"}})
	addRel(&Relation{Schema: "public", Name: "invoker_over_definer", Kind: 'v', SecurityInvoker: true, DependsOn: []string{"public.orders_definer_view"}})
	addRel(&Relation{Schema: "public", Name: "events_2025_view", Kind: 'v', SecurityInvoker: true, DependsOn: []string{"public.events_2025"}})

	// Partitions and inheritance children: protected only if they are
	// themselves, whatever their parent.
	partition := func(name, parent string, prot bool) *Relation {
		r := &Relation{Schema: "public", Name: name, Kind: 'r', TenantColumn: true, IsPartition: true, Parents: []string{parent}}
		r.RowSecurity, r.ForceRowSecurity, r.TenantPolicy = prot, prot, prot
		return r
	}
	addRel(partition("events_2024", "public.events", true))
	addRel(partition("events_2025", "public.events", false))
	addRel(&Relation{Schema: "public", Name: "raw_events", Kind: 'p', TenantColumn: true})
	addRel(partition("raw_events_acme", "public.raw_events", true))
	child := func(name string, prot bool) *Relation {
		r := partition(name, "public.orders", prot)
		r.IsPartition = false
		return r
	}
	addRel(child("orders_2023", true))
	addRel(child("orders_archive", false))
	// A policy that reads a setting besides the tenant setting.
	cat.PolicySettings = []string{"App.Bypass_RLS", testSetting}
	// User operators: one calls a SECURITY DEFINER function, one an allowed one.
	cat.Operators = map[string][]string{"public.===": {"public.elevated"}, "public.<~>": {"public.safe_fn"}}

	addFn(&Function{Schema: "public", Name: "do_thing", Kind: 'f', Volatile: true})
	addFn(&Function{Schema: "public", Name: "elevated", Kind: 'f', SecurityDefiner: true, Volatile: true})
	addFn(&Function{Schema: "public", Name: "safe_fn", Kind: 'f', Volatile: true})
	addFn(&Function{Schema: "public", Name: "stable_fn", Kind: 'f'})
	addFn(&Function{Schema: "public", Name: "trusted_definer", Kind: 'f', SecurityDefiner: true, Volatile: true})
	addFn(&Function{Schema: "public", Name: "untrusted_definer", Kind: 'f', SecurityDefiner: true, Volatile: true})
	addFn(&Function{Schema: "public", Name: "process_orders", Kind: 'p', Volatile: true})
	addFn(&Function{Schema: "public", Name: "purge", Kind: 'p', Volatile: true})
	addFn(&Function{Schema: "public", Name: "md5", Kind: 'f'}) // shadows pg_catalog.md5
	// pgcrypto installed into pg_catalog: user functions all the same.
	addFn(&Function{Schema: "pg_catalog", Name: "gen_salt", Kind: 'f', Volatile: true, Extension: true})
	addFn(&Function{Schema: "pg_catalog", Name: "crypt", Kind: 'f', Extension: true})
	// No built-in is SECURITY DEFINER: one in pg_catalog is a user's.
	addFn(&Function{Schema: "pg_catalog", Name: "definer_in_catalog", Kind: 'f', SecurityDefiner: true})
	addFn(&Function{Schema: "public", Name: "dblink", Kind: 'f'})
	addFn(&Function{Schema: "public", Name: "dblink_exec", Kind: 'f'})
	addFn(&Function{Schema: "public", Name: "pg_stat_statements", Kind: 'f'})
	return cat
}

// demoRules are the rules the corpus runs under.
func demoRules() Rules {
	return Rules{
		TenantSetting: testSetting,
		Protected:     []string{"legacy", "public.audit_raw", "public.missing"},
		Shared:        map[string]bool{"public.plans": false, "feature_flags": true, "public.gone": false, "shared_view": false},
		Internal:      []string{"tenant_audit", "internal_view"},
		AllowFunctions: map[string]bool{
			"public.safe_fn":           false,
			"pg_catalog.crypt":         false,
			"public.stable_fn":         false,
			"public.trusted_definer":   true,
			"public.untrusted_definer": false,
			"public.process_orders":    false,
		},
	}
}

func readFields(t testing.TB, path string, f func([]string)) {
	t.Helper()
	file, err := os.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f(strings.Fields(line))
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
}

// TestTenantKey: a policy expression is keyed on the tenant only when it
// ANDs an equality between a column and the setting, in the forms
// pg_get_expr prints.
func TestTenantKey(t *testing.T) {
	const s = "app.current_tenant_id"
	for _, tt := range []struct {
		expr, column string // column "" means not keyed
	}{
		{"(tenant_id = current_setting('app.current_tenant_id'::text))", "tenant_id"},
		{"(tenant_id = current_setting('app.current_tenant_id'::text, true))", "tenant_id"},
		{"(tenant_id = NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))", "tenant_id"},
		{"(tenant_id = (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::uuid)", "tenant_id"},
		{"(org = (current_setting('app.current_tenant_id'::text))::integer)", "org"},
		{"(org = (current_setting('app.current_tenant_id'::text))::bigint)", "org"},
		{"((tenant_id)::character varying = current_setting('app.current_tenant_id'::text))", "tenant_id"},
		{"((owner = current_setting('app.current_tenant_id'::text)) OR (owner = NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text)))", "owner"},
		{"(tenant_id = ( SELECT current_setting('app.current_tenant_id'::text, true) AS current_setting))", "tenant_id"},
		{"((tenant_id)::text = pg_catalog.current_setting('APP.Current_Tenant_Id'::text))", "tenant_id"},
		{"(current_setting('app.current_tenant_id'::text) = tenant_id)", "tenant_id"},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) AND (NOT deleted))", "tenant_id"},
		{"((NOT deleted) AND ((a > 1) AND (tenant_id = current_setting('app.current_tenant_id'::text))))", "tenant_id"},
		{`("Tenant" = current_setting('app.current_tenant_id'::text))`, "Tenant"},
		// A switch: a setting pgmoat refuses tenants, compared with a constant.
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_setting('app.bypass'::text, true) = 'on'::text))", "tenant_id"},
		{"(('on'::text = current_setting('app.bypass'::text, true)) OR ((tenant_id = current_setting('app.current_tenant_id'::text)) AND a))", "tenant_id"},

		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR true)", ""},
		{"(current_setting('app.bypass'::text, true) = 'on'::text)", ""},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_setting('app.current_tenant_id'::text) = 'admin'::text))", ""},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_setting('app.bypass'::text, true) IS NULL))", ""},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_setting('app.bypass'::text, true) <> 'off'::text))", ""},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_setting('app.bypass'::text) = tenant_id))", ""},
		{"(NOT ((tenant_id = current_setting('app.current_tenant_id'::text)) AND true))", ""},
		// Switches only on custom settings, which tenants cannot change.
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_setting('transaction_read_only'::text) = 'on'::text))", ""},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_setting('server_encoding'::text) = 'UTF8'::text))", ""},
		// One column throughout.
		{"((owner = current_setting('app.current_tenant_id'::text)) OR (tenant_id = current_setting('app.current_tenant_id'::text)))", ""},
		// Casts that fold distinct tenants together.
		{"(((tenant_id)::character(1))::bpchar = ((current_setting('app.current_tenant_id'::text))::character(1))::bpchar)", ""},
		{"((tenant_id)::boolean = (current_setting('app.current_tenant_id'::text))::boolean)", ""},
		{"(tenant_id = (current_setting('app.current_tenant_id'::text))::character varying(3))", ""},
		{"(tenant_id = (current_setting('app.current_tenant_id'::text))::name)", ""},
		{"(tenant_id = (current_setting('app.current_tenant_id'::text))::public.tenant)", ""},
		{"((tenant_id)::integer = current_setting('app.current_tenant_id'::text))", ""},
		// A policy must not change the setting it reads.
		{"(tenant_id = current_setting('app.current_tenant_id'::text, (set_config('app.current_tenant_id'::text, 'globex'::text, true) IS NULL)))", ""},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) AND (pg_catalog.set_config('app.current_tenant_id'::text, 'globex'::text, true) IS NOT NULL))", ""},
		{"(tenant_id = current_setting('app.current_tenant_id'::text, (random() > (0.5)::double precision)))", ""},
		{"((tenant_id = current_setting('app.current_tenant_id'::text)) OR (current_user = 'admin'::name))", ""},
		{"(tenant_id <> current_setting('app.current_tenant_id'::text))", ""},
		{"(tenant_id >= current_setting('app.current_tenant_id'::text))", ""},
		{"(NOT (tenant_id = current_setting('app.current_tenant_id'::text)))", ""},
		{"(tenant_id = COALESCE(current_setting('app.current_tenant_id'::text, true), tenant_id))", ""},
		{"(tenant_id = ANY (string_to_array(current_setting('app.current_tenant_id'::text), ','::text)))", ""},
		{"(tenant_id = current_setting('app.current_tenant_id_admin'::text))", ""},
		{"(tenant_id = current_setting(('app.current_tenant_id'::text || ''::text)))", ""},
		{"(tenant_id = lower(current_setting('app.current_tenant_id'::text)))", ""},
		{"(tenant_id = ( SELECT current_setting('app.current_tenant_id'::text) FROM t))", ""},
		{"(lower(tenant_id) = current_setting('app.current_tenant_id'::text))", ""},
		{"(t.tenant_id = current_setting('app.current_tenant_id'::text))", ""},
		{"(tenant_id = tenant_id)", ""},
		{"true", ""},
		{"", ""},
		{"tenant_id = current_setting('app.current_tenant_id') ; DROP TABLE x", ""},
		{"not an expression (", ""},
	} {
		col, ok := TenantKey(tt.expr, s)
		if ok != (tt.column != "") || col != tt.column {
			t.Errorf("TenantKey(%q) = %q, %v; want %q", tt.expr, col, ok, tt.column)
		}
	}
}

// TestDeclaredProtected: declaring a table protected vouches for policies
// pgmoat cannot read, but not for row-level security that is off or not
// forced.
func TestDeclaredProtected(t *testing.T) {
	cat := &Catalog{SearchPath: []string{"pg_catalog", "public"}, Relations: map[string]*Relation{}}
	for _, r := range []*Relation{
		{Schema: "public", Name: "vouched", Kind: 'r', RowSecurity: true, ForceRowSecurity: true},
		{Schema: "public", Name: "not_forced", Kind: 'r', RowSecurity: true, TenantPolicy: true},
		{Schema: "public", Name: "rls_off", Kind: 'r', ForceRowSecurity: true, TenantPolicy: true},
		{Schema: "public", Name: "undeclared", Kind: 'r', RowSecurity: true, ForceRowSecurity: true},
	} {
		cat.Relations[r.Key()] = r
	}
	e := NewEngine(Rules{TenantSetting: testSetting, Protected: []string{"vouched", "not_forced", "rls_off"}}, cat, 0)
	for name, allowed := range map[string]bool{"vouched": true, "not_forced": false, "rls_off": false, "undeclared": false} {
		_, v := e.Check("SELECT * FROM "+name, &Session{Tenant: "acme"})
		if (v == nil) != allowed {
			t.Errorf("%s: violation %v, want allowed=%v", name, v, allowed)
		}
	}
}
