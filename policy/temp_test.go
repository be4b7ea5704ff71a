package policy

import (
	"slices"
	"strings"
	"testing"
)

// withTempPrefix is sql with TempPrefix inserted at offs, as the rewriter
// sends it.
func withTempPrefix(sql string, offs []int) string {
	var b strings.Builder
	from := 0
	for _, off := range offs {
		b.WriteString(sql[from:off])
		b.WriteString(TempPrefix(sql, off))
		from = off
	}
	b.WriteString(sql[from:])
	return b.String()
}

// TestTempQualify checks that every use of a name allowed only as a
// temporary table of the session is qualified with pg_temp., and nothing
// else: the server then never resolves it to a relation the catalog
// snapshot does not know yet.
func TestTempQualify(t *testing.T) {
	sess := &Session{Tenant: "acme", TempTables: map[string]struct{}{"t": {}, "u": {}, "T x": {}}}
	tests := []struct{ sql, want string }{
		{"SELECT * FROM t", "SELECT * FROM pg_temp.t"},
		{"select * from t where id = 1;", "select * from pg_temp.t where id = 1;"},
		{"SELECT * FROM ONLY t", "SELECT * FROM ONLY pg_temp.t"},
		{"TABLE t", "TABLE pg_temp.t"},
		{"SELECT t.id FROM t", "SELECT t.id FROM pg_temp.t"},
		{"SELECT * FROM t JOIN orders USING (id)", "SELECT * FROM pg_temp.t JOIN orders USING (id)"},
		{"SELECT * FROM orders o LEFT JOIN t ON t.id = o.id JOIN u ON u.id = t.id",
			"SELECT * FROM orders o LEFT JOIN pg_temp.t ON t.id = o.id JOIN pg_temp.u ON u.id = t.id"},
		{"SELECT * FROM orders WHERE id IN (SELECT id FROM t) AND EXISTS (SELECT 1 FROM (SELECT * FROM u) s)",
			"SELECT * FROM orders WHERE id IN (SELECT id FROM pg_temp.t) AND EXISTS (SELECT 1 FROM (SELECT * FROM pg_temp.u) s)"},
		{"INSERT INTO t VALUES (1)", "INSERT INTO pg_temp.t VALUES (1)"},
		{"INSERT INTO t AS a (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = a.id RETURNING *",
			"INSERT INTO pg_temp.t AS a (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = a.id RETURNING *"},
		{"INSERT INTO orders (tenant_id, customer_id, amount) SELECT 'acme', id, 1 FROM t",
			"INSERT INTO orders (tenant_id, customer_id, amount) SELECT 'acme', id, 1 FROM pg_temp.t"},
		{"UPDATE t SET id = u.id FROM u WHERE t.id = u.id", "UPDATE pg_temp.t SET id = u.id FROM pg_temp.u WHERE t.id = u.id"},
		{"DELETE FROM t USING u WHERE t.id = u.id", "DELETE FROM pg_temp.t USING pg_temp.u WHERE t.id = u.id"},
		{"COPY t FROM STDIN", "COPY pg_temp.t FROM STDIN"},
		{"COPY t (id) FROM STDIN WITH (FORMAT csv)", "COPY pg_temp.t (id) FROM STDIN WITH (FORMAT csv)"},
		{"COPY (SELECT * FROM t) TO STDOUT", "COPY (SELECT * FROM pg_temp.t) TO STDOUT"},
		{"LOCK TABLE t", "LOCK TABLE pg_temp.t"},
		{"EXPLAIN SELECT * FROM t", "EXPLAIN SELECT * FROM pg_temp.t"},
		{"PREPARE p AS SELECT * FROM t", "PREPARE p AS SELECT * FROM pg_temp.t"},
		{"DECLARE c CURSOR FOR SELECT * FROM t", "DECLARE c CURSOR FOR SELECT * FROM pg_temp.t"},
		{"CREATE TEMP TABLE n (LIKE t)", "CREATE TEMP TABLE n (LIKE pg_temp.t)"},
		{"CREATE TEMP TABLE n AS SELECT * FROM t", "CREATE TEMP TABLE n AS SELECT * FROM pg_temp.t"},
		// The walk meets the INSERT target before the WITH query: the
		// offsets are sorted anyway.
		{"WITH c AS (SELECT * FROM t) INSERT INTO u SELECT * FROM c",
			"WITH c AS (SELECT * FROM pg_temp.t) INSERT INTO pg_temp.u SELECT * FROM c"},
		// A WITH query hides the temporary table of the same name.
		{"WITH t AS (SELECT 1 AS id) SELECT * FROM t, u", "WITH t AS (SELECT 1 AS id) SELECT * FROM t, pg_temp.u"},
		// Quoted names: pg_temp. goes before the opening quote.
		{`SELECT * FROM "t"`, `SELECT * FROM pg_temp."t"`},
		{`SELECT * FROM "T x"`, `SELECT * FROM pg_temp."T x"`},
		{`SELECT * FROM U&"\0074"`, `SELECT * FROM pg_temp.U&"\0074"`},
		{`SELECT * FROM u&"!0074" UESCAPE '!'`, `SELECT * FROM pg_temp.u&"!0074" UESCAPE '!'`},
		// A quoted name right after a keyword needs a space before pg_temp.
		{`SELECT * FROM"t"JOIN"u"USING(id)`, `SELECT * FROM pg_temp."t"JOIN pg_temp."u"USING(id)`},
		{`DROP TABLE"t",u`, `DROP TABLE pg_temp."t",pg_temp.u`},
		{"SELECT * FROM(t JOIN u USING(id))", "SELECT * FROM(pg_temp.t JOIN pg_temp.u USING(id))"},
		// Byte offsets, whatever precedes the name.
		{"SELECT 'été' AS saison, * FROM t", "SELECT 'été' AS saison, * FROM pg_temp.t"},
		{"SELECT * FROM /* comment */ t -- x", "SELECT * FROM /* comment */ pg_temp.t -- x"},
		// Several statements; a name appearing twice is qualified twice.
		{"SELECT * FROM t; SELECT * FROM orders; INSERT INTO u SELECT * FROM t",
			"SELECT * FROM pg_temp.t; SELECT * FROM orders; INSERT INTO pg_temp.u SELECT * FROM pg_temp.t"},
		// Tables created earlier in the text are qualified too.
		{"CREATE TEMP TABLE n (id int) ON COMMIT DROP; INSERT INTO n VALUES (1); INSERT INTO orders (tenant_id, amount) SELECT 'acme', id FROM n; DROP TABLE n",
			"CREATE TEMP TABLE n (id int) ON COMMIT DROP; INSERT INTO pg_temp.n VALUES (1); INSERT INTO orders (tenant_id, amount) SELECT 'acme', id FROM pg_temp.n; DROP TABLE pg_temp.n"},
		// DROP TABLE: the names are found with the scanner.
		{"DROP TABLE t", "DROP TABLE pg_temp.t"},
		{"drop table if exists t, pg_temp.u cascade;", "drop table if exists pg_temp.t, pg_temp.u cascade;"},
		{"DROP TABLE /* a */ u -- b\n, \"t\"", "DROP TABLE /* a */ pg_temp.u -- b\n, pg_temp.\"t\""},
		{"SELECT 1; DROP TABLE pg_temp . t, u RESTRICT", "SELECT 1; DROP TABLE pg_temp . t, pg_temp.u RESTRICT"},
		// Nothing to qualify: catalog and qualified names.
		{"SELECT * FROM orders JOIN customers ON customers.id = orders.customer_id", ""},
		{"SELECT * FROM public.orders", ""},
		{"SELECT * FROM pg_temp.t", ""},
		{"SELECT * FROM pg_class", ""},
		{"SELECT * FROM pg_catalog.pg_type", ""},
		{"INSERT INTO orders (tenant_id, amount) VALUES ('acme', 1)", ""},
		{"DROP TABLE pg_temp.t", ""},
		{"SELECT 1", ""},
	}
	e := NewEngine(demoRules(), demoCatalog(t), 0)
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			d, v := e.Check(tt.sql, sess)
			if v != nil {
				t.Fatalf("refused: %v", v)
			}
			if tt.want == "" {
				if d.TempQualify != nil {
					t.Fatalf("TempQualify = %v, want none", d.TempQualify)
				}
				return
			}
			if !slices.IsSorted(d.TempQualify) {
				t.Fatalf("TempQualify %v not sorted", d.TempQualify)
			}
			if got := withTempPrefix(tt.sql, d.TempQualify); got != tt.want {
				t.Fatalf("rewritten:\n got %q\nwant %q", got, tt.want)
			}
			if !parses(tt.want) {
				t.Fatalf("the rewritten text does not parse")
			}
		})
	}
}

// TestTempQualifyCached: a cache hit returns the offsets of its own text,
// and texts that differ only in constants do not share them.
func TestTempQualifyCached(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 100)
	sess := &Session{Tenant: "acme", TempTables: map[string]struct{}{"t": {}}}
	for _, sql := range []string{
		"SELECT * FROM orders WHERE id = 1 AND id IN (SELECT id FROM t)",
		"SELECT * FROM orders WHERE id = 1 AND id IN (SELECT id FROM t)", // hit
		"SELECT * FROM orders WHERE id = 123456 AND id IN (SELECT id FROM t)",
	} {
		d, v := e.Check(sql, sess)
		if v != nil {
			t.Fatalf("%s: refused: %v", sql, v)
		}
		want := strings.Replace(sql, "FROM t", "FROM pg_temp.t", 1)
		if got := withTempPrefix(sql, d.TempQualify); got != want {
			t.Fatalf("rewritten:\n got %q\nwant %q", got, want)
		}
	}
}

// TestTempQualifyRefusedStillUnknown: the offsets do not change what is
// refused; a name the session did not create stays unknown.
func TestTempQualifyRefusedStillUnknown(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 0)
	for _, sql := range []string{"SELECT * FROM x", "DROP TABLE x", "SELECT 1; INSERT INTO x VALUES (1)"} {
		_, v := e.Check(sql, &Session{Tenant: "acme"})
		if v == nil {
			t.Fatalf("%s: allowed without a temporary table x", sql)
		}
	}
}

func TestDropNames(t *testing.T) {
	tests := []struct {
		text string
		want []dropName // nil: not understood
	}{
		{"DROP TABLE t", []dropName{{11, 1}}},
		{"drop table if exists a.b, c cascade", []dropName{{21, 2}, {26, 1}}},
		{"DROP TABLE \"a\".\"b\"\t,\n table;", []dropName{{11, 2}, {22, 1}}},
		{`DROP TABLE U&"d!0061" UESCAPE '!', x`, []dropName{{11, 1}, {35, 1}}},
		{"/* c */ DROP TABLE -- d\n db.s.t RESTRICT", []dropName{{25, 3}}},
		{"DROP TABLE", nil},
		{"DROP TABLE t,", nil},
		{"DROP TABLE a..b", nil},
		{"DROP TABLE IF t", nil},
		{"DROP TABLE t CASCADE x", nil},
		{"DROP VIEW t", nil},
		{"DROP TABLE 'x'", nil},
		{"DROP TABLE t; DROP TABLE u", nil},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			if got := dropNames(tt.text); !slices.Equal(got, tt.want) {
				t.Fatalf("dropNames = %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzTempQualify checks, for texts a session with temporary tables t and
// u may run, that the offsets are ascending and inside statements, and that
// the rewritten text parses into as many statements and is allowed as it
// stands (every name it had to qualify now is).
func FuzzTempQualify(f *testing.F) {
	for _, sql := range []string{
		"SELECT * FROM t", "DROP TABLE IF EXISTS t, u", `SELECT * FROM U&"\0074" JOIN "u" USING (id)`,
		"WITH c AS (SELECT * FROM t) INSERT INTO u SELECT * FROM c", "COPY t FROM STDIN; SELECT * FROM u",
		"CREATE TEMP TABLE n (id int); INSERT INTO n SELECT * FROM t; DROP TABLE n",
		`SELECT 0 FROM"u"`, // found by fuzzing: needs " pg_temp."
	} {
		f.Add(sql)
	}
	e := NewEngine(demoRules(), demoCatalog(f), 0)
	sess := &Session{Tenant: "acme", TempTables: map[string]struct{}{"t": {}, "u": {}}}
	f.Fuzz(func(t *testing.T, sql string) {
		d, v := e.Check(sql, sess)
		if v != nil || len(d.TempQualify) == 0 {
			return
		}
		prev := -1
		for _, off := range d.TempQualify {
			inside := false
			for _, st := range d.Stmts {
				inside = inside || (st.Start <= off && off < st.End)
			}
			if off <= prev || !inside || !isNameStart(sql, off) {
				t.Fatalf("offsets %v in %q: %d out of order or place", d.TempQualify, sql, off)
			}
			prev = off
		}
		q := withTempPrefix(sql, d.TempQualify)
		dq, vq := e.Check(q, sess)
		if vq != nil || len(dq.TempQualify) != 0 || len(dq.Stmts) != len(d.Stmts) {
			t.Fatalf("%q rewritten to %q: %v, %d statements (was %d), TempQualify %v", sql, q, vq, len(dq.Stmts), len(d.Stmts), dq.TempQualify)
		}
	})
}
