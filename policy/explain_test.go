package policy

import (
	"reflect"
	"strings"
	"testing"
)

// Explain runs the same analysis as Check: for every corpus case its
// violation must be the one Check returns.
func TestExplainAgreesWithCheck(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 0)
	for _, c := range loadCorpus(t) {
		t.Run(c.name(), func(t *testing.T) {
			_, want := e.Check(c.sql, &c.sess)
			x := e.Explain(c.sql, &c.sess)
			if !reflect.DeepEqual(x.Violation, want) {
				t.Fatalf("Explain violation %+v, Check %+v", x.Violation, want)
			}
			if len(x.Statements) == 0 && strings.TrimSpace(strings.Trim(c.sql, ";")) != "" && !strings.HasPrefix(strings.TrimSpace(c.sql), "--") && !strings.HasPrefix(strings.TrimSpace(c.sql), "/*") {
				t.Fatalf("no statements for %q", c.sql)
			}
			for _, o := range x.Objects {
				if o.Stmt < 0 || o.Stmt >= len(x.Statements) {
					t.Errorf("object %+v: statement out of range", o)
				}
				if o.Allowed != (o.Reason == "") {
					t.Errorf("object %+v: Allowed disagrees with Reason", o)
				}
				if o.Class == "" || o.Name == "" || o.Access == "" {
					t.Errorf("object %+v: empty field", o)
				}
			}
		})
	}
}

// obj is the part of an Object the table below checks.
type obj struct {
	name, access, class, via string
	allowed                  bool
}

func TestExplainObjects(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 0)
	tests := []struct {
		sql     string
		sess    Session
		reason  Reason // "" if allowed
		command string
		want    []obj
	}{
		{"SELECT * FROM orders o JOIN plans p ON true, audit_raw", Session{}, ReasonUnprotectedRelation, "SELECT", []obj{
			{"public.orders", "read", "protected by row-level security", "", true},
			{"public.plans", "read", "shared, read-only", "", true},
			{"public.audit_raw", "read", "unprotected: row-level security not enabled", "", false},
		}},
		{"SELECT * FROM orders, tenant_audit", Session{}, ReasonUnprotectedRelation, "SELECT", []obj{
			{"public.orders", "read", "protected by row-level security", "", true},
			{"public.tenant_audit", "read", "internal (policy.internal): refused to tenants", "", false},
		}},
		{"UPDATE plans SET price = 0", Session{}, ReasonSharedWrite, "UPDATE", []obj{
			{"public.plans", "write", "shared, read-only", "", false},
		}},
		{"SELECT * FROM pg_class, pg_stat_activity", Session{}, ReasonSystemCatalog, "SELECT", []obj{
			{"pg_catalog.pg_class", "read", "system catalog, allowed (read-only)", "", true},
			{"pg_catalog.pg_stat_activity", "read", "system catalog, refused", "", false},
		}},
		{"SELECT * FROM order_plans", Session{}, "", "SELECT", []obj{
			{"public.order_plans", "read", "view, security_invoker", "", true},
			{"public.orders", "read", "protected by row-level security", "public.order_plans", true},
			{"public.plans", "read", "shared, read-only", "public.order_plans", true},
			{"pg_catalog.pg_class", "read", "system catalog, allowed (read-only)", "public.order_plans", true},
		}},
		{"SELECT * FROM orders_definer_view", Session{}, ReasonUnprotectedRelation, "SELECT", []obj{
			{"public.orders_definer_view", "read", "view with its owner's rights (not security_invoker)", "", false},
			{"public.orders", "read", "protected by row-level security", "public.orders_definer_view", true},
		}},
		{"SELECT nextval('orders_id_seq'), setval('global_seq', 1)", Session{}, ReasonFunction, "SELECT", []obj{
			{"pg_catalog.nextval", "call", "built-in", "", true},
			{"public.orders_id_seq", "nextval", "sequence owned by public.orders (protected)", "", true},
			{"pg_catalog.setval", "call", "built-in, refused", "", false},
		}},
		{"SELECT * FROM events_2025 JOIN events_2024 USING (id)", Session{}, ReasonUnprotectedRelation, "SELECT", []obj{
			{"public.events_2025", "read", "unprotected: row-level security not enabled, partition of public.events", "", false},
			{"public.events_2024", "read", "protected by row-level security, partition of public.events", "", true},
		}},
		{"SELECT safe_fn(), trusted_definer(), do_thing()", Session{}, ReasonFunction, "SELECT", []obj{
			{"public.safe_fn", "call", "user function, volatile, allowed", "", true},
			{"public.trusted_definer", "call", "user function, SECURITY DEFINER, volatile, allowed, trusted", "", true},
			{"public.do_thing", "call", "user function, volatile, not allowed", "", false},
		}},
		{"WITH audit_raw AS (SELECT 1) SELECT * FROM audit_raw, t", Session{TempTables: map[string]struct{}{"t": {}}}, "", "SELECT", []obj{
			{"audit_raw", "read", "WITH query", "", true},
			{"pg_temp.t", "read", "temporary table of this session", "", true},
		}},
		{"SELECT * FROM t", Session{}, ReasonUnknownRelation, "SELECT", []obj{
			{"pg_temp.t", "read", "not in the catalog: must be a temporary table of this session", "", false},
		}},
		{"CREATE TEMP TABLE t (id int); INSERT INTO t SELECT 1; SELECT 'audit_raw'::regclass", Session{}, "", "CREATE TABLE", []obj{
			{"pg_temp.t", "create", "temporary table, created here", "", true},
			{"pg_temp.t", "write", "temporary table created earlier in this text", "", true},
			{"public.audit_raw", "regclass", "unprotected: row-level security not enabled", "", true},
		}},
		{"SET app.current_tenant_id = 'globex'", Session{}, ReasonTenantSetting, "SET", []obj{
			{"app.current_tenant_id", "set", "setting", "", false},
		}},
		{"SET app.current_tenant_id = 'globex'", Session{Admin: true}, "", "SET", []obj{
			{"app.current_tenant_id", "set", "setting", "", false},
		}},
		{"TRUNCATE orders", Session{}, ReasonStatement, "TRUNCATE", []obj{
			{"public.orders", "read", "protected by row-level security", "", true},
		}},
		{"INSERT INTO orders (tenant_id, amount) VALUES ('acme', 1)", Session{ReadOnly: true}, ReasonReadOnly, "INSERT", []obj{
			{"public.orders", "write", "protected by row-level security", "", true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			x := e.Explain(tt.sql, &tt.sess)
			var reason Reason
			if x.Violation != nil {
				reason = x.Violation.Reason
			}
			if reason != tt.reason {
				t.Fatalf("reason %q, want %q (%+v)", reason, tt.reason, x.Violation)
			}
			if x.Statements[0].Command != tt.command {
				t.Errorf("command %q, want %q", x.Statements[0].Command, tt.command)
			}
			var got []obj
			for _, o := range x.Objects {
				got = append(got, obj{o.Name, o.Access, o.Class, o.Via, o.Allowed})
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("objects:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestCatalogJSONRoundTrip(t *testing.T) {
	cat := demoCatalog(t)
	var b strings.Builder
	if err := cat.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"kind": "p"`) {
		t.Fatalf("relkind not written as a letter:\n%.500s", b.String())
	}
	got, err := ReadCatalogJSON(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, cat) {
		t.Fatal("catalog changed in a JSON round trip")
	}
	bad := []string{
		`{"relations": {"public.x": {"schema": "public", "name": "y", "kind": "r"}}}`,
		`{"relations": {"public.x": {"schema": "public", "name": "x", "kind": "rr"}}}`,
		`{"functions": {"public.f": {"schema": "public", "name": "f", "kind": ""}}}`,
		`{"search_path": ["public"], "unknown": 1}`,
	}
	for _, s := range bad {
		if _, err := ReadCatalogJSON(strings.NewReader(s)); err == nil {
			t.Errorf("ReadCatalogJSON(%s): no error", s)
		}
	}
}
