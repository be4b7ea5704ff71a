package policy

import (
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v5"
)

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
			if d, v, ok := cached.Lookup(sql, s); ok {
				// Lookup must answer exactly as Check, when it answers.
				if d != d1 && (len(d.Stmts) != 1 || len(d1.Stmts) != 1 || d.Stmts[0] != d1.Stmts[0]) || v != v1 && (v == nil || v1 == nil || v.Reason != v1.Reason) {
					t.Errorf("%q: Lookup %+v %v, Check %+v %v", sql, d.Stmts, v, d1.Stmts, v1)
				}
			}
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

// TestLookup: Lookup answers a cached text and a new text of a known shape
// without parsing, and nothing else.
func TestLookup(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 100)
	s := &Session{Tenant: "acme"}
	const first, second = "SELECT * FROM orders WHERE id = 1", "SELECT * FROM orders WHERE id = 2"
	if _, _, ok := e.Lookup(first, s); ok {
		t.Fatalf("Lookup answered %q before any analysis", first)
	}
	e.Check(first, s)
	for _, sql := range []string{first, second} {
		d, v, ok := e.Lookup(sql, s)
		if !ok || v != nil || len(d.Stmts) != 1 || d.Stmts[0].End != len(sql) {
			t.Errorf("Lookup(%q) = %+v, %v, %v; want the shape's decision", sql, d, v, ok)
		}
	}
	// A refused text is cached by text, and Lookup refuses it too.
	const refused = "SELECT * FROM pg_authid"
	_, want := e.Check(refused, s)
	if _, v, ok := e.Lookup(refused, s); !ok || v == nil || v.Reason != want.Reason {
		t.Errorf("Lookup(%q) = %v, %v; want %v", refused, v, ok, want)
	}
	for _, sql := range []string{
		"SELECT * FROM orders WHERE id = 1 AND amount > 3", // a new shape
		"SELECT * FROM orders WHERE id = $$1$$",            // scanShape gives up on dollar quotes
		"SELECT 1\x00",
	} {
		if _, _, ok := e.Lookup(sql, s); ok {
			t.Errorf("Lookup answered %q, which needs a parse", sql)
		}
	}
	if _, _, ok := NewEngine(demoRules(), demoCatalog(t), 0).Lookup(first, s); ok {
		t.Error("Lookup answered without a cache")
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

// TestScanShape: scanShape replaces exactly the string and number literals,
// and gives up on whatever it does not lex exactly as PostgreSQL does.
func TestScanShape(t *testing.T) {
	for _, tt := range []struct {
		sql  string
		want string // "" means scanShape gives up
	}{
		{"SELECT * FROM t WHERE id = 42", "\x00SELECT * FROM t WHERE id = \x02"},
		{"  select a FROM t WHERE x = 'it''s' AND y = 1.5e-3;", "\x00  select a FROM t WHERE x = \x01 AND y = \x02;"},
		{"INSERT INTO t (a, b) VALUES (.5, 'a\\b')", "\x00INSERT INTO t (a, b) VALUES (\x02, \x01)"},
		{"UPDATE t SET a = 1. WHERE b = 'é'", "\x00UPDATE t SET a = \x02 WHERE b = \x01"},
		{"DELETE FROM t1 WHERE \"co'l\" = 'x'", "\x00DELETE FROM t1 WHERE \"co'l\" = \x01"},
		{"WITH x AS (SELECT 1) SELECT a$b, 'a'\t'b' FROM x", "\x00WITH x AS (SELECT \x02) SELECT a$b, \x01\t\x01 FROM x"},
		{"VALUES (1e5), ('')", "\x00VALUES (\x02), (\x01)"},
		{"SELECT 1::varchar(10)", "\x00SELECT \x02::varchar(\x02)"},
		{"SELECT 1; SELECT 'a'", "\x00SELECT \x02; SELECT \x01"},
		{"SET app.current_tenant_id = 'x'", ""},
		{"COPY t FROM '/tmp/x'", ""},
		{"DO 'begin end'", ""},
		{"PREPARE p AS SELECT 1", ""},
		{"(SELECT 1)", ""},
		{"SELECT 1 -- comment", ""},
		{"SELECT 1 /* comment */", ""},
		{"SELECT 1 --", ""},
		{"SELECT $1", ""},
		{"SELECT $$a$$", ""},
		{"SELECT E'\\''", ""},
		{"SELECT e'x'", ""},
		{"SELECT B'101'", ""},
		{"SELECT X'1F'", ""},
		{"SELECT N'x'", ""},
		{"SELECT U&'\\0041'", ""},
		{"SELECT u&\"x\"", ""},
		{"SELECT 0x1F", ""},
		{"SELECT 1_000", ""},
		{"SELECT 12abc", ""},
		{"SELECT 1e", ""},
		{"SELECT 1e+", ""},
		{"SELECT 1..2", ""},
		{"SELECT x...5", ""}, // the lexer reads "..", ".5"; a lone "." then ".5" would be wrong
		{"SELECT 1.5.6", ""},
		{"SELECT 1'a'", ""},
		{"SELECT 'a'\n'b'", ""},
		{"SELECT 'a'  \r\n  'b'", ""},
		{"SELECT 'unterminated", ""},
		{"SELECT \"unterminated", ""},
		{"SELECT \"caf\xc3\xa9\"", ""},
		{"SELECT café FROM t", ""},
		{"SELECT 1\x01", ""},
		{"SELECT \\x", ""},
		{"", ""},
	} {
		got, ok := scanShape(tt.sql)
		if ok != (tt.want != "") || got != tt.want {
			t.Errorf("scanShape(%q) = %q, %v; want %q", tt.sql, got, ok, tt.want)
		}
	}
}

// lexedShape is scanShape's key computed from PostgreSQL's own lexer.
func lexedShape(sql string) (string, bool) {
	res, err := pg_query.Scan(sql)
	if err != nil {
		return "", false
	}
	buf, at := []byte{0}, 0
	for _, tok := range res.Tokens {
		buf = append(buf, sql[at:tok.Start]...)
		switch tok.Token {
		case pg_query.Token_SCONST:
			buf = append(buf, shapeString)
		case pg_query.Token_ICONST, pg_query.Token_FCONST:
			buf = append(buf, shapeNumber)
		default:
			buf = append(buf, sql[tok.Start:tok.End]...)
		}
		at = int(tok.End)
	}
	return string(append(buf, sql[at:]...)), true
}

// FuzzScanShape: where scanShape gives a key, PostgreSQL's lexer finds
// the same literals at the same places, so texts with one key differ only
// in their literals' values. go test runs the seeds; go test -fuzz
// FuzzScanShape explores.
func FuzzScanShape(f *testing.F) {
	for _, c := range loadCorpus(f) {
		f.Add(c.sql)
	}
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	for _, s := range []string{"SELECT 1.e5, .5e-1, 5., 'a''b' FROM t", "select\t1\v,\f'x'", "SELECT t.5", "SELECT \"\"", "SELECT 'a''", "SELECT 1 'a'", "SELECT a.b.c", "SELECT ...0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		key, ok := scanShape(sql)
		if !ok {
			return
		}
		if strings.IndexByte(key[1:], 0) >= 0 {
			t.Fatalf("scanShape(%q) = %q: a NUL after the prefix", sql, key)
		}
		lexed, lexes := lexedShape(sql)
		if !lexes {
			// The lexer refuses it: so must it refuse every text of the
			// key, which scanShape copied verbatim but for literals,
			// whose values the lexer does not judge (but for encoding,
			// which shapeKey checks first).
			return
		}
		if key != lexed {
			t.Fatalf("scanShape(%q) = %q; PostgreSQL's lexer gives %q", sql, key, lexed)
		}
	})
}
