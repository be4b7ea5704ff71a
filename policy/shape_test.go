package policy

import "testing"

// TestShapeCache: texts that differ only in constants share one analysis
// when the decision did not look at a constant, and never otherwise.
func TestShapeCache(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 100)
	s := &Session{Tenant: "acme"}
	for _, tt := range []struct {
		first, second string
		secondAllowed bool
	}{
		{"SELECT * FROM orders WHERE id = 1", "SELECT * FROM orders WHERE id = 2", true},
		{"SELECT * FROM orders WHERE id = 1;", "SELECT * FROM orders WHERE id = 22;", true},
		{"UPDATE orders SET amount = 1 WHERE id = 2;", "UPDATE orders SET amount = 10 WHERE id = 20;", true},
		{"SELECT * FROM orders WHERE id = 1 ; -- x\n", "SELECT * FROM orders WHERE id = 333 ; -- x\n", true},
		{"SELECT * FROM orders WHERE status = 'new' LIMIT 5", "SELECT * FROM orders WHERE status = 'x''; select 1' LIMIT 50", true},
		// The decision reads the constant: each text is analysed.
		{"SELECT nextval('customers_id_seq')", "SELECT nextval('global_seq')", false},
		{"SET application_name = 'a'", "SET client_encoding = 'SJIS'", false},
		{"SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'", false},
		// Invalid UTF-8 fails the parse, whatever the shape.
		{"SELECT 'ok'", "SELECT '\xff\xfe'", false},
	} {
		if _, v := e.Check(tt.first, s); v != nil {
			t.Fatalf("%q: %v", tt.first, v)
		}
		d, v := e.Check(tt.second, s)
		if (v == nil) != tt.secondAllowed {
			t.Errorf("%q after %q: violation %v, want allowed=%v", tt.second, tt.first, v, tt.secondAllowed)
		}
		fresh, _ := NewEngine(demoRules(), demoCatalog(t), 0).Check(tt.second, s)
		if len(d.Stmts) != len(fresh.Stmts) || len(d.Stmts) == 1 && d.Stmts[0] != fresh.Stmts[0] {
			t.Errorf("%q: statements %+v, fresh analysis %+v", tt.second, d.Stmts, fresh.Stmts)
		}
	}
}

// TestShapeCacheAgreesOnCorpus runs the corpus twice through one caching
// engine, so that every text can be answered by another of its shape, and
// compares each decision with a fresh analysis.
func TestShapeCacheAgreesOnCorpus(t *testing.T) {
	cached := NewEngine(demoRules(), demoCatalog(t), 10000)
	plain := NewEngine(demoRules(), demoCatalog(t), 0)
	texts := append([]string{}, fuzzSeeds...)
	for _, c := range loadCorpus(t) {
		texts = append(texts, c.sql)
	}
	for _, sql := range texts {
		for _, s := range []*Session{{Tenant: "acme"}, {Tenant: "acme", ReadOnly: true}} {
			d1, v1 := cached.Check(sql, s)
			d2, v2 := plain.Check(sql, s)
			if (v1 == nil) != (v2 == nil) || v1 != nil && v1.Reason != v2.Reason {
				t.Errorf("%q: cached %v, fresh %v", sql, v1, v2)
			}
			if len(d1.Stmts) != len(d2.Stmts) {
				t.Errorf("%q: cached %+v, fresh %+v", sql, d1.Stmts, d2.Stmts)
				continue
			}
			for i := range d1.Stmts {
				if d1.Stmts[i] != d2.Stmts[i] {
					t.Errorf("%q: cached %+v, fresh %+v", sql, d1.Stmts, d2.Stmts)
				}
			}
		}
	}
}

// TestShapeCacheReadOnly: a write shared by shape is still refused to a
// read-only session (without a position, which depends on the constants).
func TestShapeCacheReadOnly(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 100)
	ro := &Session{Tenant: "acme", ReadOnly: true}
	for i, sql := range []string{"UPDATE orders SET amount = 1 WHERE id = 2", "UPDATE orders SET amount = 10 WHERE id = 20"} {
		if _, v := e.Check(sql, &Session{Tenant: "acme"}); v != nil {
			t.Fatalf("%q for a tenant: %v", sql, v)
		}
		_, v := e.Check(sql, ro)
		if v == nil || v.Reason != ReasonReadOnly {
			t.Fatalf("text %d %q for a read-only session: %v, want %s", i, sql, v, ReasonReadOnly)
		}
	}
}
