package policy

import (
	"strings"
	"testing"
)

// fuzzSeeds are hostile texts added to the corpus seeds: encodings the
// parser may not expect, quoting that can hide a statement boundary, and
// the many spellings of changing the tenant setting.
var fuzzSeeds = []string{
	"",
	";",
	"\x00",
	"SELECT 1\x00; SET app.current_tenant_id = 'evil'",
	"SELECT '\x00'",
	"SELECT '\xff\xfe'",
	"SELECT \xc3",
	"SELECT 'é\x80'; SELECT 2",
	"SELECT * FROM \"orders\xed\xa0\x80\"",
	`SELECT * FROM U&"\0061udit_raw"`,
	`SELECT * FROM U&"!0061udit_raw" UESCAPE '!'`,
	`SELECT U&'\0041' FROM orders`,
	`SET U&"app.current_tenant_id" = 'evil'`,
	`SELECT set_config(U&'app.current\005ftenant_id', 'evil', true)`,
	"SELECT $$; SET app.current_tenant_id = 'evil'; $$",
	"SELECT $a$ $$ ; $a$; SELECT 2",
	"SELECT $a$ unterminated",
	"SELECT 'unterminated",
	`SELECT "unterminated`,
	"SELECT 1 /* unterminated",
	"SELECT E'\\'; SET app.current_tenant_id = 'evil'; --'",
	"SELECT '' ';' ; SELECT 2",
	"SET app.current_tenant_id = 'evil'",
	"SET app.current_tenant_id TO evil",
	"SET LOCAL app.current_tenant_id = 'evil'",
	"SET SESSION app.current_tenant_id = 'evil'",
	"SET \"app\".\"current_tenant_id\" = 'evil'",
	"SET APP.CURRENT_TENANT_ID = 'evil'",
	"set app.current_tenant_id=default",
	"RESET app.current_tenant_id",
	"RESET ALL",
	"SELECT 1; SET app.current_tenant_id = 'evil'; SELECT * FROM orders",
	"BEGIN; SET LOCAL app.current_tenant_id = 'evil'; COMMIT",
	"SELECT set_config('app.current_tenant_id', 'evil', false)",
	"SELECT pg_catalog.set_config('app.current_tenant_id', 'evil', true) FROM orders",
	"PREPARE p AS SELECT set_config('app.current_tenant_id', 'evil', true)",
	"COPY (SELECT set_config('app.current_tenant_id', 'evil', true)) TO STDOUT",
	"DO $$ BEGIN EXECUTE 'SET app.current_tenant_id = ''evil'''; END $$",
	"WITH x AS (SELECT set_config('app.current_tenant_id', 'evil', true)) SELECT * FROM x, orders",
	strings.Repeat("(", 1000) + "1" + strings.Repeat(")", 1000),
	"SELECT " + strings.Repeat("1+", 2000) + "1",
}

// FuzzCheck checks the policy's invariants on arbitrary text. go test runs
// the seeds; go test -fuzz FuzzCheck explores.
func FuzzCheck(f *testing.F) {
	for _, c := range loadCorpus(f) {
		f.Add(c.sql)
	}
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	cat := demoCatalog(f)
	cached := NewEngine(demoRules(), cat, 1000)
	uncached := NewEngine(demoRules(), cat, 0)
	tenant := &Session{Tenant: "acme"}
	readOnly := &Session{Tenant: "acme", ReadOnly: true}
	admin := &Session{Tenant: "acme", Admin: true}

	f.Fuzz(func(t *testing.T, sql string) {
		d, v := uncached.Check(sql, tenant)
		if d == nil {
			t.Fatal("nil Decision")
		}
		checkStmts(t, sql, d)

		// An error never means allow: text the parser refuses is refused
		// with 42601.
		if !parses(sql) || strings.IndexByte(sql, 0) >= 0 {
			if v == nil {
				t.Fatalf("text that does not parse was allowed: %q", sql)
			}
			if v.Reason != ReasonParseError || v.SQLState != "42601" {
				t.Fatalf("text that does not parse: reason %s, SQLSTATE %s; want %s, 42601", v.Reason, v.SQLState, ReasonParseError)
			}
		} else if v != nil && v.Reason == ReasonParseError {
			t.Fatalf("text that parses refused as a parse error: %s", v.Message)
		}
		if v != nil {
			checkFuzzViolation(t, sql, d, v)
		}

		// The cache changes nothing: a miss and a hit agree with no cache.
		for pass := range 2 {
			cd, cv := cached.Check(sql, tenant)
			if (cv == nil) != (v == nil) {
				t.Fatalf("pass %d: cached engine allowed=%t, uncached allowed=%t", pass, cv == nil, v == nil)
			}
			if cv != nil && cv.Reason != v.Reason {
				t.Fatalf("pass %d: cached engine reason %s, uncached %s", pass, cv.Reason, v.Reason)
			}
			checkStmts(t, sql, cd)
		}

		// Read-only only takes away.
		rd, rv := uncached.Check(sql, readOnly)
		if v != nil && rv == nil {
			t.Fatalf("read-only session allowed what a tenant session is refused (%s)", v.Reason)
		}
		if rv != nil {
			checkFuzzViolation(t, sql, rd, rv)
		}

		if _, av := uncached.Check(sql, admin); av != nil {
			t.Fatalf("admin session got a violation: %s", av.Message)
		}
	})
}

// checkStmts checks that the statements of d are in order, do not overlap
// and lie within sql.
func checkStmts(t *testing.T, sql string, d *Decision) {
	t.Helper()
	prev := 0
	for i, s := range d.Stmts {
		if s.Start < prev || s.Start > s.End || s.End > len(sql) {
			t.Fatalf("Stmts[%d] = [%d,%d): out of order or outside [%d,%d]; all: %+v", i, s.Start, s.End, prev, len(sql), d.Stmts)
		}
		prev = s.End
	}
}

// checkFuzzViolation is checkViolation (the Violation contract), except as
// noted below.
func checkFuzzViolation(t *testing.T, sql string, d *Decision, v *Violation) {
	t.Helper()
	w := *v
	// That a message names its object is a wording rule, checked on the
	// corpus by TestCorpus; here only the Violation contract is.
	w.Object = ""
	checkViolation(t, sql, d, &w)
}
