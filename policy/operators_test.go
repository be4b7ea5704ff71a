package policy

import (
	"strings"
	"testing"
)

// Operators PostgreSQL calls without the text naming them (BETWEEN, IN,
// CASE x WHEN, JOIN USING) are checked as if named: with user comparison
// operators in the catalog, each of these may call their function.
func TestImpliedUserOperators(t *testing.T) {
	cat := demoCatalog(t)
	cat.Operators = map[string][]string{
		"public.=": {"public.elevated"}, "public.<": {"public.elevated"}, "public.<=": {"public.elevated"},
		"public.>": {"public.elevated"}, "public.>=": {"public.elevated"},
		// In pg_catalog, by a superuser: reachable even when qualified.
		"pg_catalog.<->": {"public.elevated"},
	}
	e := NewEngine(demoRules(), cat, 0)
	for _, tc := range []struct {
		sql     string
		allowed bool
	}{
		{"SELECT * FROM orders WHERE id BETWEEN 1 AND 2", false},
		{"SELECT * FROM orders WHERE id NOT BETWEEN SYMMETRIC 1 AND 2", false},
		{"SELECT * FROM orders WHERE id IN (SELECT id FROM customers)", false},
		{"SELECT * FROM orders WHERE id IN (1, 2)", false},
		{"SELECT CASE id WHEN 1 THEN 'one' END FROM orders", false},
		{"SELECT * FROM orders JOIN customers USING (id)", false},
		{"SELECT * FROM orders NATURAL JOIN customers", false},
		{"SELECT * FROM orders WHERE id IS DISTINCT FROM 1", false},
		{"SELECT NULLIF(id, 1) FROM orders", false},
		{"SELECT * FROM orders WHERE id = 1", false},
		// Sorting, grouping and DISTINCT use the type's default operator
		// class, which only a superuser can create: not checked by name.
		{"SELECT id + 1 FROM orders ORDER BY id", true},
		{"SELECT CASE WHEN true THEN 1 END", true},
		{"SELECT * FROM orders JOIN customers ON true", true},
		{"SELECT * FROM orders WHERE id OPERATOR(pg_catalog.=) 1", true},
		{"SELECT * FROM orders WHERE id OPERATOR(pg_catalog.<->) 1", false},
		{"SELECT * FROM orders WHERE id <-> 1", false},
	} {
		_, v := e.Check(tc.sql, nil)
		if allowed := v == nil; allowed != tc.allowed || !allowed && v.Reason != ReasonFunction {
			t.Errorf("%s: violation %v, want allowed %v", tc.sql, v, tc.allowed)
		}
	}
}

// SET search_path is allowed only when the server's path stays the
// catalog's, whatever the catalog's path is.
func TestSearchPathUnchanged(t *testing.T) {
	for _, tc := range []struct {
		catalog []string
		set     string
		allowed bool
	}{
		{[]string{"pg_catalog", "public"}, "SET search_path TO public", true},
		{[]string{"pg_catalog", "public"}, "SET search_path TO pg_catalog, public", true},
		{[]string{"pg_catalog", "public"}, "SET search_path TO public, pg_catalog", false},
		{[]string{"pg_catalog", "public"}, "SET search_path TO public, public", false},
		{[]string{"pg_catalog", "public"}, "SET search_path TO ''", false},
		// A role whose path puts pg_catalog after public.
		{[]string{"public", "pg_catalog"}, "SET search_path TO public, pg_catalog", true},
		{[]string{"public", "pg_catalog"}, "SET search_path TO public", false},
		{[]string{"public", "pg_catalog"}, "SET search_path TO pg_catalog, public, pg_catalog", false},
		{[]string{"pg_catalog", "app", "public"}, "SET search_path TO app, public", true},
		{[]string{"pg_catalog", "app", "public"}, "SET search_path TO public, app", false},
	} {
		cat := demoCatalog(t)
		cat.SearchPath = tc.catalog
		_, v := NewEngine(demoRules(), cat, 0).Check(tc.set, nil)
		if allowed := v == nil; allowed != tc.allowed {
			t.Errorf("catalog path %q, %s: violation %v, want allowed %v", tc.catalog, tc.set, v, tc.allowed)
		}
	}
}

// An internal table's rows are refused through its partitions and
// children; declaring only a child internal is reported, since its rows
// stay readable through its parent.
func TestInternalFindings(t *testing.T) {
	r := demoRules()
	r.Internal = append(r.Internal, "orders_2023", "public.nowhere")
	e := NewEngine(r, demoCatalog(t), 0)
	var child, missing bool
	for _, f := range e.Findings() {
		child = child || strings.Contains(f, `"public.orders_2023" is a partition or child of "public.orders"`)
		missing = missing || strings.Contains(f, `declared internal table "public.nowhere" does not exist`)
	}
	if !child || !missing {
		t.Errorf("findings %q: want the internal child and the missing table", e.Findings())
	}
	if _, v := e.Check("SELECT * FROM orders_2023", nil); v == nil || v.Reason != ReasonUnprotectedRelation {
		t.Errorf("internal child: %v, want refused", v)
	}
}

// Operator keys are schema.op, and a schema name may hold dots; a snapshot
// whose keys are bare operator names (written before they were qualified)
// is refused rather than read as having no operators.
func TestOperatorKeys(t *testing.T) {
	cat := demoCatalog(t)
	cat.Operators = map[string][]string{`my.schema.===`: {"public.elevated"}}
	if _, v := NewEngine(demoRules(), cat, 0).Check("SELECT 1 === 2", nil); v == nil || v.Reason != ReasonFunction {
		t.Errorf("operator of a dotted schema: %v, want refused", v)
	}
	old := `{"search_path": ["pg_catalog", "public"], "relations": {}, "functions": {}, "operators": {"===": ["public.elevated"]}}`
	if _, err := ReadCatalogJSON(strings.NewReader(old)); err == nil || !strings.Contains(err.Error(), `operator key "==="`) {
		t.Errorf("snapshot with a bare operator key: %v, want refused", err)
	}
}

// Decision.Blocking is the first violation audit mode refuses too, found
// even behind violations audit mode lets run (an unprotected relation, an
// unknown name, a write in a read-only session).
func TestBlockingBehindAuditable(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 0)
	escape := "set_config('app.current_tenant_id', 'globex', true)"
	for _, tc := range []struct {
		sql  string
		sess Session
		stmt int // of the blocking violation; -1: none
	}{
		{"SELECT count(*) FROM audit_raw; SELECT " + escape + "; SELECT 1", Session{}, 1},
		{"SELECT * FROM billing.ledger, " + escape, Session{}, 0},
		{"SELECT * FROM no_such_tbl; SELECT " + escape, Session{}, 1},
		{"INSERT INTO orders (amount) VALUES (1); SELECT " + escape, Session{ReadOnly: true}, 1},
		{"SELECT count(*) FROM audit_raw; SELECT 1", Session{}, -1},
		{"SELECT " + escape + "; SELECT * FROM audit_raw", Session{}, 0},
	} {
		d, v := e.Check(tc.sql, &tc.sess)
		if v == nil {
			t.Errorf("%s: allowed, want a violation", tc.sql)
			continue
		}
		switch b := d.Blocking; {
		case tc.stmt < 0 && b != nil:
			t.Errorf("%s: Blocking %v, want none", tc.sql, b)
		case tc.stmt >= 0 && (b == nil || b.Stmt != tc.stmt || b.Reason.Auditable()):
			t.Errorf("%s: Blocking %+v, want a non-auditable violation in statement %d", tc.sql, b, tc.stmt)
		}
	}
}
